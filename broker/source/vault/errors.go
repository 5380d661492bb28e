package vault

import "errors"

var (
	// ErrResponseTooLarge means Vault's answer exceeded Config.MaxResponseBytes. It is treated
	// as unavailability (source.ErrUnavailable) and never buffered past the limit.
	ErrResponseTooLarge = errors.New("vault response too large")
	// ErrNotLoggedIn means the daemon holds no valid Vault token and logging in failed or is
	// backing off. It wraps source.ErrUnavailable where it is returned.
	ErrNotLoggedIn = errors.New("not logged in to vault")
	// ErrNamespaceUnsupported means a namespace is configured (vault.namespace,
	// vault.auth.namespace or a grant's vault source) but the server is not Vault Enterprise,
	// the only edition with namespaces. Vault's open-source edition ignores the
	// X-Vault-Namespace header, so every request would silently reach the root namespace
	// instead: the source refuses them.
	ErrNamespaceUnsupported = errors.New("vault namespaces need Vault Enterprise, and this server is not Vault Enterprise")
)
