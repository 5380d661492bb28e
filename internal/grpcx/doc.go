// Package grpcx is the gRPC edge that the broker's servers (broker/server) and the CSI driver
// (csi) share: the one mapping from domain errors to status codes (ToStatus), the logging and
// panic-recovery interceptors, the Unix socket listener with its mode and peer checks, and
// Serve, which stops a server gracefully when its context ends.
//
// Security decisions:
//   - a status message comes only from an error whose text is caller-safe (a broker error or an
//     Error built here); anything else is Internal with a fixed message, so backend error text
//     never reaches a caller;
//   - the logging interceptor never logs a request or a response (CSI volume contexts carry pod
//     tokens, responses carry secret values), and the recovery interceptor logs the stack of a
//     panic but never its value, which could hold request data.
package grpcx
