"""The `gdpr` domain: requests, identities, data sources, retention, audit."""
