// Package broker ties Keywarden's domain together: it authenticates a caller's token
// (identity), decides whether the caller may read a secret (grant), fetches the value through the
// node's cache and refresh engine (rotate, source), and records every decision (audit).
//
// It holds no transport: the gRPC server and the CSI driver call it with a verified
// identity.Workload and turn its errors into status codes through one mapping function.
package broker
