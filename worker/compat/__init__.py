"""Patches for third-party libraries, each in its own module, each with the bug it works
around and when it can go: `kombu_closed_channel_guard`.
"""
