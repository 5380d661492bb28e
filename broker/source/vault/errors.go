package vault

import "errors"

var (
	// ErrResponseTooLarge means Vault's answer exceeded Config.MaxResponseBytes. It is treated
	// as unavailability (source.ErrUnavailable) and never buffered past the limit.
	ErrResponseTooLarge = errors.New("vault response too large")
	// ErrNotLoggedIn means the daemon holds no valid Vault token and logging in failed or is
	// backing off. It wraps source.ErrUnavailable where it is returned.
	ErrNotLoggedIn = errors.New("not logged in to vault")
)
