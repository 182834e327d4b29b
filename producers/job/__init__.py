"""What a job is and the rules it must pass before it is queued: the job models (`models`, and
Yotpo's in `yotpo`), Attentive's field rules (`rules`), validation with every broken rule named
(`validation`), freshness, sensitive-data checks and JSON values. Nothing here touches Redis.
"""
