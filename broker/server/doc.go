// Package server is the gRPC edge of the broker: the workload SecretService on the node socket,
// the AdminService on the root-only admin socket, and the interceptors only they need
// (authentication from `authorization: Bearer`, admin authorization and auditing, metrics).
// Logging, panic recovery, listening and serving come from internal/grpcx, shared with csi.
//
// Domain errors become gRPC status codes in exactly one place, grpcx.ToStatus. Tokens and secret
// values never reach a log line: the logging interceptor records the method, the code and the
// caller's namespace and service account only.
package server
