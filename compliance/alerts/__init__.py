"""Alerts: conditions an on-call engineer and a DPO must hear about, sent by email and a
Slack-compatible webhook, once per condition until it clears, and a daily digest.

    conditions.py  what is wrong now (`evaluate`): findings, PII-free
    refusals.py    refused download tokens by client pseudonym: recorded, counted, pruned
    state.py       which alerts are raised; notices per channel until each took them
    channels.py    email (`compliance.mail`) and webhook (HTTP POST of {"text": ...})
    check.py       one check: evaluate, raise and clear, the digest, deliver (`check`)
"""
