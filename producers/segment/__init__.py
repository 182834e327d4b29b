"""The Segment mapping: a Segment track, page or identify message as Attentive jobs (`mapping`),
and as Yotpo custom events (`yotpo`).
"""
