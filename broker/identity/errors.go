package identity

import "errors"

var (
	// ErrInvalidToken matches every verification failure caused by the token
	// itself. The concrete error is a *VerifyError with a short reason.
	ErrInvalidToken = errors.New("invalid token")

	// ErrUnknownKey is returned by a KeySet when it has no key with the
	// requested kid. Verify turns it into a VerifyError "unknown key id".
	ErrUnknownKey = errors.New("unknown key id")

	// ErrUnavailable is returned by a KeySet when its keys cannot be obtained
	// (JWKS endpoint down, ...). Verify passes it through (not as
	// ErrInvalidToken) so callers can answer "unavailable", not
	// "unauthenticated".
	ErrUnavailable = errors.New("key set unavailable")
)

// Verification failure reasons. They are fixed phrases: never token bytes or
// claim values, so an error can be logged and returned as is.
const (
	ReasonTooLarge             = "too large"
	ReasonMalformed            = "malformed"
	ReasonUnsupportedAlgorithm = "unsupported algorithm"
	ReasonMissingKeyID         = "missing key id"
	ReasonUnknownKeyID         = "unknown key id"
	ReasonKeyMismatch          = "key does not match algorithm"
	ReasonBadSignature         = "bad signature"
	ReasonDuplicateClaim       = "duplicate claim"
	ReasonLegacyToken          = "legacy service account token"
	ReasonWrongIssuer          = "wrong issuer"
	ReasonMissingAudience      = "missing audience"
	ReasonWrongAudience        = "wrong audience"
	ReasonMissingExp           = "missing exp"
	ReasonMissingIat           = "missing iat"
	ReasonMissingNbf           = "missing nbf"
	ReasonExpired              = "expired"
	ReasonIssuedInFuture       = "issued in the future"
	ReasonNotYetValid          = "not yet valid"
	ReasonLifetimeTooLong      = "lifetime too long"
	ReasonInvalidLifetime      = "exp before iat"
	ReasonInvalidNamespace     = "invalid namespace"
	ReasonInvalidSA            = "invalid service account"
	ReasonSubjectMismatch      = "subject does not match claims"
	ReasonNoPodBinding         = "no pod binding"
	ReasonInvalidPod           = "invalid pod claim"
	ReasonInvalidNode          = "invalid node claim"
	ReasonOtherNode            = "token bound to another node"
	ReasonPodNotOnNode         = "pod is not running on this node"
	ReasonPodMismatch          = "pod does not match the token"
	ReasonRejectedByReview     = "rejected by TokenReview"

	// ReasonServiceAccountRecreated: the token's service account no longer exists, or
	// exists under the same name with another UID.
	ReasonServiceAccountRecreated = "service account was deleted or recreated"
)

// VerifyError is a token verification failure. It matches ErrInvalidToken.
type VerifyError struct {
	// Reason is one of the Reason… constants.
	Reason string
}

func (e *VerifyError) Error() string { return "invalid token: " + e.Reason }

// Is reports whether target is ErrInvalidToken.
func (e *VerifyError) Is(target error) bool { return target == ErrInvalidToken }

func invalid(reason string) error { return &VerifyError{Reason: reason} }

// unavailableError wraps the KeySet's error. Its message is fixed: the cause
// may mention the attacker-chosen kid, so it is reachable through Unwrap for
// callers that want it but is never part of Error().
type unavailableError struct{ cause error }

func (e *unavailableError) Error() string   { return "verify token: " + ErrUnavailable.Error() }
func (e *unavailableError) Unwrap() []error { return []error{ErrUnavailable, e.cause} }
