"""Forwarding an erasure to Attentive (its Privacy Request API), one concept per module:

    api        the two calls: file a deletion request, check whether it was processed
    store      the requests' records in Redis (no phone number or email once filed)
    forwarder  filing and checking through the rate limiter and the retry policy
    check      the scheduled check every worker runs

``attentive-relay erase`` deletes the relay's own copy (`producers.store.erasure`), then forwards
the deletion to every account the person's jobs were queued under (docs/privacy.md, "Erasure forwarded to Attentive").
"""
