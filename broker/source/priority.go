package source

import "context"

type backgroundKey struct{}

// Background marks ctx as a background refresh (a scheduled renewal or poll) rather than a
// fetch a caller is waiting for. Sources with limited capacity (Vault) serve foreground fetches
// — the first mount of a new pod — ahead of background ones.
func Background(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

// IsBackground reports whether ctx was marked by Background.
func IsBackground(ctx context.Context) bool {
	v, _ := ctx.Value(backgroundKey{}).(bool)
	return v
}
