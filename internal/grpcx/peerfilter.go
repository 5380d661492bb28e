package grpcx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"

	"github.com/keywarden/keywarden/broker"
)

// How refused peers are answered: at most maxRefusing connections at a time, each for at most
// refusedConnAge (plus a grace for the answer in flight), so that a refused local user cannot
// make the daemon hold many connections. Beyond maxRefusing, connections are closed unanswered.
const (
	maxRefusing    = 16
	refusedConnAge = 2 * time.Second
)

// PeerFilter wraps the admin socket's Unix listener so that only processes running as one of
// the allowed user ids reach the server that serves it (SO_PEERCRED). The socket's file mode
// is the first guard; this is the second, which also holds when the socket is bind-mounted
// somewhere with other permissions.
//
// A refused connection never reaches that server: Accept hands it to a server of its own that
// has no services and answers every call, unary or streaming and whatever its method, with
// PermissionDenied saying which uids are allowed and which uid the caller runs as, then closes
// the connection within a few seconds. A refused caller thus reads why, where closing the
// connection at once would show it only "connection reset", and a handler cannot be reached by
// a refused peer whatever interceptors the real server has. onRefuse, which may be nil, is
// called once per refused connection, before it is answered.
//
// Close closes lis and stops answering refused peers; the caller must close the returned
// listener (a gRPC server does when it stops).
func PeerFilter(lis net.Listener, allowed []uint32, onRefuse func(uid uint32)) net.Listener {
	return newPeerFilter(lis, allowed, onRefuse, refusedConnAge)
}

func newPeerFilter(lis net.Listener, allowed []uint32, onRefuse func(uid uint32), age time.Duration) *peerFilter {
	p := &peerFilter{
		Listener: lis,
		allowed:  slices.Clone(allowed),
		onRefuse: onRefuse,
		slots:    make(chan struct{}, maxRefusing),
		refused:  &chanListener{conns: make(chan net.Conn), closed: make(chan struct{}), addr: lis.Addr()},
		served:   make(chan struct{}),
	}
	p.refuser = grpc.NewServer(
		grpc.Creds(refusalCreds{}),
		grpc.UnknownServiceHandler(answerRefused),
		grpc.MaxConcurrentStreams(4),
		grpc.MaxRecvMsgSize(1<<10),
		grpc.ConnectionTimeout(age),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: age, MaxConnectionAgeGrace: time.Second}),
	)
	go func() {
		defer close(p.served)
		// It ends when Close stops it; there is no error of a refused peer to report.
		_ = p.refuser.Serve(p.refused)
	}()
	return p
}

type peerFilter struct {
	net.Listener
	allowed  []uint32
	onRefuse func(uid uint32)

	slots   chan struct{} // one per refused connection being answered
	refused *chanListener // refused connections, served by refuser
	refuser *grpc.Server
	served  chan struct{} // closed when refuser's Serve has returned

	closeOnce sync.Once
	closeErr  error
}

func (p *peerFilter) Accept() (net.Conn, error) {
	for {
		c, err := p.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, ok := peerUID(c)
		if ok && slices.Contains(p.allowed, uid) {
			return c, nil
		}
		if p.onRefuse != nil {
			p.onRefuse(uid)
		}
		p.refuse(c, refusal(p.allowed, uid, ok))
	}
}

// refuse hands c to the refuser, or closes it when too many refused peers are being answered
// or the filter is closed.
func (p *peerFilter) refuse(c net.Conn, reason string) {
	select {
	case p.slots <- struct{}{}:
	default:
		_ = c.Close()
		return
	}
	rc := &refusedConn{Conn: c, reason: reason, release: func() { <-p.slots }}
	select {
	case p.refused.conns <- rc:
	case <-p.refused.closed:
		_ = rc.Close()
	}
}

// Close closes the listener and stops answering refused peers. It is idempotent.
func (p *peerFilter) Close() error {
	p.closeOnce.Do(func() {
		p.closeErr = p.Listener.Close()
		_ = p.refused.Close() // first: the refuser's Serve returns only once its Accept does
		p.refuser.Stop()
		<-p.served
	})
	return p.closeErr
}

// refusal is the message a refused peer gets. It names only uids: the caller's own and the
// allowed ones, which the socket's owner and mode show anyway.
func refusal(allowed []uint32, uid uint32, known bool) string {
	var ids []string
	for _, a := range allowed {
		if s := strconv.FormatUint(uint64(a), 10); !slices.Contains(ids, s) {
			ids = append(ids, s) // the daemon's own uid is 0 when it runs as root
		}
	}
	list := "no uid"
	switch n := len(ids); {
	case n == 1:
		list = "uid " + ids[0]
	case n > 1:
		list = "uid " + strings.Join(ids[:n-1], ", ") + " and " + ids[n-1]
	}
	if !known {
		return fmt.Sprintf("the admin socket accepts only %s, and could not read this process's uid (SO_PEERCRED)", list)
	}
	return fmt.Sprintf("the admin socket accepts only %s; this process runs as uid %d", list, uid)
}

// answerRefused is the refuser's only handler: it answers every call without reading it.
func answerRefused(_ any, ss grpc.ServerStream) error {
	reason := "the admin socket refused this process" // unreachable: every refused conn has its reason
	if p, ok := peer.FromContext(ss.Context()); ok {
		if r, ok := p.AuthInfo.(refusalInfo); ok {
			reason = r.reason
		}
	}
	return ToStatus(Errorf(broker.ErrPermissionDenied, "%s", reason))
}

// refusedConn is a refused connection with the reason it gets; Close frees its slot.
type refusedConn struct {
	net.Conn
	reason  string
	release func()
	once    sync.Once
}

func (c *refusedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// refusalCreds carry a refused connection's reason to answerRefused: the handshake does
// nothing on the wire (the client connects without transport security, as on the real
// server) and returns the reason as the connection's AuthInfo, which gRPC puts in every
// call's peer.
type refusalCreds struct{}

type refusalInfo struct{ reason string }

func (refusalInfo) AuthType() string { return "peercred" }

func (refusalCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	rc, ok := c.(*refusedConn)
	if !ok {
		return nil, nil, errors.New("not a refused connection")
	}
	return c, refusalInfo{reason: rc.reason}, nil
}

func (refusalCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("refusal credentials are for the server only")
}

func (refusalCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (c refusalCreds) Clone() credentials.TransportCredentials { return c }

func (refusalCreds) OverrideServerName(string) error { return nil }

// chanListener is a listener whose connections are sent on conns.
type chanListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
	addr   net.Addr
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

func peerUID(c net.Conn) (uint32, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return 0, false
	}
	return cred.Uid, true
}
