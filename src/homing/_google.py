"""Where Google publishes what homing checks against: facts, no code (imported by the settings
without the verifier's cryptography)."""

#: Google's certificates for the OIDC tokens Pub/Sub and Cloud Tasks attach to a push.
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
