"""`assistant demo`: the whole private-learning story on one machine (story.py runs it; device.py is one simulated
device's process; world.py synthesises what the devices hear; measure.py scores heads before and after)."""
