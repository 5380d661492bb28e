package main

// The container image is built FROM scratch and has no /etc/ssl, so the daemon (Vault, OIDC/JWKS,
// the apiserver when its CA is not mounted) would have no TLS roots. This embeds Mozilla's bundle;
// Go uses it only when the system has no roots of its own, so a host or image that ships a CA
// bundle (or SSL_CERT_FILE) still wins.
import _ "golang.org/x/crypto/x509roots/fallback"
