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
	// MaxWatchesPerWorkload caps the WatchSecrets streams one workload has open at once, over
	// all its connections (MaxConcurrentStreams bounds only one connection, and a workload
	// can open many). Default 16: the client opens one stream per Watch call and one stream
	// carries up to 64 names, so a pod needs a few (one per container or secret group) plus
	// overlap while a client reconnects; 16 is well above that, yet a compromised pod at its
	// cap holds well under 1 MB of daemon memory (a stream costs about 40 KB). The workload
	// server only; a stream beyond it is refused with ResourceExhausted.
	MaxWatchesPerWorkload int
	// MaxWatches caps the WatchSecrets streams open at once on the workload server, over all
	// workloads. Default 2048: a node runs at most 110 pods by default, and 110 × 16 = 1760
	// fits, while 2048 streams take about 80 MB, inside the chart's 256 MiB memory limit
	// next to the daemon's own. The workload server only.
	MaxWatches int
}

// Defaults of the watch stream caps (Limits.MaxWatchesPerWorkload, Limits.MaxWatches).
const (
	DefaultMaxWatchesPerWorkload = 16
	DefaultMaxWatches            = 2048
)

// watchCaps returns the watch stream caps with defaults applied.
func (l Limits) watchCaps() (perWorkload, total int) {
	perWorkload, total = l.MaxWatchesPerWorkload, l.MaxWatches
	if perWorkload <= 0 {
		perWorkload = DefaultMaxWatchesPerWorkload
	}
	if total <= 0 {
		total = DefaultMaxWatches
	}
	return perWorkload, total
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
