"""An extension whose module raises at import, as one with a missing setting or dependency would."""

raise RuntimeError("the sample billing backend is not configured (set SAMPLE_BILLING_URL)")
