"""The Redis store the producers share with the worker: key names (`keys`), the connection
(`connection`), per-identity ordering (`ordering`), erasure (`erasure`), the Celery message
template (`message`), the enqueue scripts (`enqueue`), script replies (`replies`) and the one way
Lua scripts run (`lua`, reading ``lua/*.lua``).
"""
