// Package identity answers "who is calling": it verifies Kubernetes-shaped
// projected service-account tokens (JWTs) and turns them into a Workload with
// a SPIFFE ID.
//
// There is one verification path for production and dev. A Verifier checks
// every claim explicitly instead of relying on library defaults, because some
// JWT libraries silently skip a check when the expected value is empty or
// accept a token without exp. The order of the checks is fixed: size (before
// any parsing), compact shape and canonical base64, header (algorithm
// allowlist RS256/ES256, kid), key lookup, signature, duplicate JSON keys,
// legacy secret-based tokens, iss, aud, exp/iat/nbf (all three required)
// with a bounded leeway, maximum lifetime, the kubernetes.io claims and their
// consistency with sub, and the pod binding.
//
// BindingVerifier adds what a signature cannot tell, on every call: that the
// token's pod still runs on this node (PodIndex) and that its service account
// still exists with the UID in the token (ServiceAccountIndex), so a token
// outlives neither a deleted pod nor a service account deleted and recreated
// with the same name.
//
// Every rejection is a *VerifyError that matches ErrInvalidToken and carries
// a short fixed reason. Reasons never contain token bytes or claim values, so
// they are safe to log and to return to the caller. A KeySet that cannot be
// reached makes Verify fail with an error matching ErrUnavailable instead, so
// the server can answer Unavailable rather than Unauthenticated.
//
// Keys come from a KeySet: StaticKeySet (a fixed JWKS), the DevIssuer used by
// `keywarden dev` and tests, and later a refreshing OIDC/JWKS client.
//
// Token is the redacting wrapper for bearer tokens: it never prints itself.
package identity
