// Package client is the Go client of the Keywarden workload API. Application code uses it to
// read secrets from the node's Keywarden daemon over its Unix socket:
//
//	c, err := client.New("/run/keywarden/keywarden.sock",
//		client.WithTokenFile("/var/run/secrets/tokens/keywarden"))
//	s, err := c.Get(ctx, "db")
//	err = c.Watch(ctx, []string{"db"}, func(s *client.Secret) error { … })
//
// The token file is read again on every call, because kubelet rotates projected tokens in place.
// Watch reconnects with backoff after transient failures and ends on permanent ones (no grant,
// bad token).
package client
