"""Status: the model and local accuracy, learning rounds and the privacy budget, the clerk."""
