"""MQTT transport for `sda`: topic map, framing (chunking), the paho-mqtt adapter and an
embedded broker. This layer only moves bytes; `sda.protocol` decides."""
