"""Retention (storage limitation, GDPR Art. 5(1)(e)): policies, nightly sweeps, the report.

Policies are declared in the sources manifest beside the data they govern; each connector
that can enforce them implements `policy.Retaining`. `sweep` runs one policy under a
lease, in bounded batches, resumable from its cursor; `report` is the evidence that
nothing is kept longer than its limit. Legal holds (`compliance.holds`) are honoured
everywhere: whatever a hold covers is skipped and counted as held.
"""
