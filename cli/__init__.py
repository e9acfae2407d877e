"""The ``onnxprune`` command line. Before any of it loads numpy, OpenBLAS's idle threads are told to sleep at once
(``onnxprune/idle_threads.py``)."""
from onnxprune.idle_threads import sleep_when_idle

sleep_when_idle()
