package server

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Limits bound the resources one client can take. Zero fields take the defaults.
type Limits struct {
	// MaxRecvMsgSize is the largest request accepted (ResourceExhausted above). Default 64 KiB.
	MaxRecvMsgSize int
	// MaxSendMsgSize is the largest response sent. Default 4 MiB.
	MaxSendMsgSize int
	// MaxConcurrentStreams caps streams per connection (CVE-2023-44487). Default 64.
	MaxConcurrentStreams uint32
	// ConnectionTimeout bounds the connection handshake. Default 5s.
	ConnectionTimeout time.Duration
}

func (l Limits) serverOptions() []grpc.ServerOption {
	if l.MaxRecvMsgSize <= 0 {
		l.MaxRecvMsgSize = 64 << 10
	}
	if l.MaxSendMsgSize <= 0 {
		l.MaxSendMsgSize = 4 << 20
	}
	if l.MaxConcurrentStreams == 0 {
		l.MaxConcurrentStreams = 64
	}
	if l.ConnectionTimeout <= 0 {
		l.ConnectionTimeout = 5 * time.Second
	}
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(l.MaxRecvMsgSize),
		grpc.MaxSendMsgSize(l.MaxSendMsgSize),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		grpc.ConnectionTimeout(l.ConnectionTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
}
