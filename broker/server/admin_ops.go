package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/revoke"
	"github.com/keywarden/keywarden/broker/source"
	"github.com/keywarden/keywarden/internal/grpcx"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// AuditLog is the persistent audit log as the admin service reads it.
type AuditLog interface {
	Last(n int) ([]audit.Entry, error)
	Subscribe(buffer int) *audit.Subscription
	Verify() (audit.Report, error)
	Export(w io.Writer, from uint64) (int, error)
	Stats() audit.Stats
	Flush() error
}

var _ AuditLog = (*audit.Log)(nil)

// Rotator re-fetches one cached secret now.
type Rotator interface {
	Refresh(ctx context.Context, ref source.Ref) error
}

// Revoker puts revocations in force and lifts them.
type Revoker interface {
	Revoke(t revoke.Target) (name string, purged int, err error)
	Lift(t revoke.Target) (string, error)
	Names() []string
}

var _ Revoker = (*revoke.Manager)(nil)

// MaxAuditTail bounds how many existing entries AuditTail sends.
const MaxAuditTail = 10000

// adminCall is the audit record of one admin call, filled in by the handler.
type adminCall struct{ ev audit.Event }

type adminCallKey struct{}

// note lets a handler add what it acted on (secret, grant, ...) to its call's audit record.
func note(ctx context.Context, f func(ev *audit.Event)) {
	if c, ok := ctx.Value(adminCallKey{}).(*adminCall); ok {
		f(&c.ev)
	}
}

// actor names the admin caller: its SPIFFE ID over mTLS, "admin-socket" on the Unix socket.
func actor(ctx context.Context) string {
	if id, ok := AdminIDFrom(ctx); ok {
		return id.String()
	}
	if p, ok := peer.FromContext(ctx); ok {
		if _, tls := p.AuthInfo.(credentials.TLSInfo); tls {
			return "tls"
		}
	}
	return "admin-socket"
}

func auditCall(ctx context.Context, rec audit.Recorder, method string, err error, c *adminCall) {
	ev := c.ev
	ev.Kind, ev.Action, ev.Actor = audit.KindAdmin, path.Base(method), actor(ctx)
	ev.Outcome = audit.OutcomeAllow
	if err != nil {
		ev.Outcome = audit.OutcomeError
		code := status.Code(err)
		if code == codes.PermissionDenied || code == codes.Unauthenticated {
			ev.Outcome = audit.OutcomeDeny
		}
		// Status messages of the admin service are built from names and fixed phrases.
		ev.Reason = code.String() + ": " + status.Convert(err).Message()
	}
	rec.Record(context.WithoutCancel(ctx), ev)
}

func auditUnary(rec audit.Recorder) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		c := &adminCall{}
		resp, err := handler(context.WithValue(ctx, adminCallKey{}, c), req)
		auditCall(ctx, rec, info.FullMethod, err, c)
		return resp, err
	}
}

func auditStream(rec audit.Recorder) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		c := &adminCall{}
		err := handler(srv, grpcx.WithContext(ss, context.WithValue(ss.Context(), adminCallKey{}, c)))
		auditCall(ss.Context(), rec, info.FullMethod, err, c)
		return err
	}
}

// statusDetails adds the grant sources, revocations, Vault leases and audit log state to a
// status.
func (a *AdminService) statusDetails(out *keywardenv1.GetStatusResponse) {
	counts := map[string]int32{}
	var order []string
	for _, sg := range a.cfg.Broker.ListGrants() {
		if _, ok := counts[sg.Source]; !ok {
			order = append(order, sg.Source)
		}
		counts[sg.Source]++
	}
	for _, s := range order {
		out.GrantSources = append(out.GrantSources, &keywardenv1.GrantSourceStatus{Source: s, Grants: counts[s]})
	}
	if a.cfg.Revoker != nil {
		out.Revocations = a.cfg.Revoker.Names()
	}
	if a.cfg.Leases != nil {
		for _, l := range a.cfg.Leases.TrackedLeases() {
			vl := &keywardenv1.VaultLease{LeaseId: l.LeaseID, Path: l.Path, Owner: l.Owner, State: l.State}
			if !l.ExpiresAt.IsZero() {
				vl.ExpiresAt = timestamppb.New(l.ExpiresAt)
			}
			out.VaultLeases = append(out.VaultLeases, vl)
		}
	}
	out.Audit = &keywardenv1.AuditStatus{}
	if a.cfg.Audit != nil {
		st := a.cfg.Audit.Stats()
		out.Audit = &keywardenv1.AuditStatus{
			Enabled: true, FirstSeq: st.First, HeadSeq: st.Head.Seq, HeadHash: st.Head.Hash,
			Pending: int32(st.Pending), Dropped: st.Dropped, Written: st.Written, FlushFailures: st.Failures,
		}
	}
}

// RotateNow implements keywardenv1.AdminServiceServer.
func (a *AdminService) RotateNow(ctx context.Context, req *keywardenv1.RotateNowRequest) (*keywardenv1.RotateNowResponse, error) {
	if a.cfg.Rotator == nil {
		return nil, errNoRotator
	}
	name := req.GetSecret()
	if err := grant.ValidateSecretName(name); err != nil {
		return nil, invalid("secret: %v", err)
	}
	note(ctx, func(ev *audit.Event) { ev.Secret = name })
	refs := a.cfg.Broker.SourceRefs(name)
	if len(refs) == 0 {
		return nil, notFound("no grant in force names secret %q", name)
	}
	out := &keywardenv1.RotateNowResponse{}
	var versions = map[source.Ref]string{}
	for _, ref := range refs {
		r := &keywardenv1.RotatedSource{Source: ref.Source, Path: ref.Path}
		if err := a.cfg.Rotator.Refresh(ctx, ref); err != nil {
			r.Error = source.Reason(err) // backend text never leaves the daemon
		}
		out.Sources = append(out.Sources, r)
	}
	for _, e := range a.cfg.Cache.Status() {
		versions[e.Ref] = e.Version
	}
	for _, r := range out.Sources {
		if r.Error == "" {
			r.Version = versions[source.Ref{Source: r.Source, Path: r.Path}]
		}
	}
	return out, nil
}

// Revoke implements keywardenv1.AdminServiceServer.
func (a *AdminService) Revoke(ctx context.Context, req *keywardenv1.RevokeRequest) (*keywardenv1.RevokeResponse, error) {
	if a.cfg.Revoker == nil {
		return nil, errNoRevoker
	}
	t := revoke.Target{Secret: req.GetSecret(), Namespace: req.GetNamespace(), ServiceAccount: req.GetServiceAccount(), SPIFFEID: req.GetSpiffeId()}
	if err := t.Validate(); err != nil {
		return nil, invalid("%v", err)
	}
	note(ctx, func(ev *audit.Event) {
		ev.Secret, ev.Namespace, ev.ServiceAccount, ev.SPIFFEID = t.Secret, t.Namespace, t.ServiceAccount, t.SPIFFEID
		ev.Grant = t.Name()
		if len(req.GetReason()) <= 256 {
			ev.Reason = req.GetReason()
		}
	})
	if req.GetLift() {
		name, err := a.cfg.Revoker.Lift(t)
		if err != nil {
			if errors.Is(err, revoke.ErrNotRevoked) {
				return nil, notFound("%v", err)
			}
			a.cfg.Logger.Error("lift revocation failed", slog.Any("error", err))
			return nil, internal("lift revocation: internal error")
		}
		return &keywardenv1.RevokeResponse{Revocation: name}, nil
	}
	name, purged, err := a.cfg.Revoker.Revoke(t)
	if err != nil {
		a.cfg.Logger.Error("revocation failed", slog.Any("error", err))
		return nil, internal("revoke: internal error")
	}
	a.cfg.Recorder.Record(ctx, audit.Event{Kind: audit.KindRevocation, Outcome: audit.OutcomeDeny, Secret: t.Secret,
		Namespace: t.Namespace, ServiceAccount: t.ServiceAccount, SPIFFEID: t.SPIFFEID, Grant: name, Actor: actor(ctx), Reason: "revoked by an administrator"})
	return &keywardenv1.RevokeResponse{Revocation: name, Purged: int32(purged)}, nil
}

func (a *AdminService) auditLog() (AuditLog, error) {
	if a.cfg.Audit == nil {
		return nil, errNoAuditLog
	}
	return a.cfg.Audit, nil
}

func tailEntry(e *audit.Entry) (*keywardenv1.AuditTailResponse, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, internal("encode audit entry")
	}
	return &keywardenv1.AuditTailResponse{Seq: e.Seq, Time: timestamppb.New(e.Time), Json: b}, nil
}

// AuditTail implements keywardenv1.AdminServiceServer.
func (a *AdminService) AuditTail(req *keywardenv1.AuditTailRequest, stream keywardenv1.AdminService_AuditTailServer) error {
	l, err := a.auditLog()
	if err != nil {
		return err
	}
	n := int(req.GetLast())
	switch {
	case n == 0:
		n = 20
	case n > MaxAuditTail:
		n = MaxAuditTail
	}
	// Subscribe before reading, so nothing written in between is lost; skip what the read
	// already covered.
	var sub *audit.Subscription
	if req.GetFollow() {
		sub = l.Subscribe(4096)
		defer sub.Close()
	}
	// Include what is still queued: an administrator expects to see what just happened.
	if err := l.Flush(); err != nil {
		a.cfg.Logger.Error("flush audit log", slog.Any("error", err))
	}
	entries, err := l.Last(n)
	if err != nil {
		a.cfg.Logger.Error("read audit log", slog.Any("error", err))
		return internal("read audit log: internal error")
	}
	var last uint64
	for i := range entries {
		m, err := tailEntry(&entries[i])
		if err != nil {
			return err
		}
		if err := stream.Send(m); err != nil {
			return err
		}
		last = entries[i].Seq
	}
	if sub == nil {
		return nil
	}
	for {
		select {
		case <-stream.Context().Done():
			return errTailCanceled
		case e, ok := <-sub.C():
			if !ok {
				if errors.Is(sub.Err(), audit.ErrLagging) {
					return errTailLagging
				}
				return nil // the daemon is stopping
			}
			if e.Seq <= last {
				continue
			}
			m, err := tailEntry(&e)
			if err != nil {
				return err
			}
			if err := stream.Send(m); err != nil {
				return err
			}
		}
	}
}

// AuditVerify implements keywardenv1.AdminServiceServer.
func (a *AdminService) AuditVerify(context.Context, *keywardenv1.AuditVerifyRequest) (*keywardenv1.AuditVerifyResponse, error) {
	l, err := a.auditLog()
	if err != nil {
		return nil, err
	}
	rep, err := l.Verify()
	var ve *audit.VerifyError
	switch {
	case errors.As(err, &ve):
		out := &keywardenv1.AuditVerifyResponse{Ok: false, More: uint32(ve.More)}
		for _, p := range ve.Problems {
			out.Problems = append(out.Problems, &keywardenv1.AuditProblem{Seq: p.Seq, Kind: string(p.Kind), Detail: p.Detail})
		}
		return out, nil
	case err != nil:
		a.cfg.Logger.Error("verify audit log", slog.Any("error", err))
		return nil, internal("verify audit log: internal error")
	}
	return &keywardenv1.AuditVerifyResponse{
		Ok: true, Entries: uint64(rep.Entries), FirstSeq: rep.First, LastSeq: rep.Last,
		HeadSeq: rep.Head.Seq, HeadHash: rep.Head.Hash, Checkpoints: uint32(rep.Checkpoints), DroppedThrough: rep.DroppedThrough,
	}, nil
}

// exportChunk is the size of one AuditExport message (whole lines, so a little more).
const exportChunk = 256 << 10

// lineChunker sends whole lines in chunks of about exportChunk bytes.
type lineChunker struct {
	buf  bytes.Buffer
	send func([]byte) error
}

func (c *lineChunker) Write(p []byte) (int, error) {
	c.buf.Write(p)
	for c.buf.Len() >= exportChunk {
		i := bytes.LastIndexByte(c.buf.Bytes(), '\n')
		if i < 0 {
			break
		}
		if err := c.send(bytes.Clone(c.buf.Bytes()[:i+1])); err != nil {
			return 0, err
		}
		c.buf.Next(i + 1)
	}
	return len(p), nil
}

func (c *lineChunker) flush() error {
	if c.buf.Len() == 0 {
		return nil
	}
	return c.send(bytes.Clone(c.buf.Bytes()))
}

// AuditExport implements keywardenv1.AdminServiceServer.
func (a *AdminService) AuditExport(req *keywardenv1.AuditExportRequest, stream keywardenv1.AdminService_AuditExportServer) error {
	l, err := a.auditLog()
	if err != nil {
		return err
	}
	if err := l.Flush(); err != nil {
		a.cfg.Logger.Error("flush audit log", slog.Any("error", err))
	}
	c := &lineChunker{send: func(b []byte) error { return stream.Send(&keywardenv1.AuditExportResponse{Data: b}) }}
	if _, err := l.Export(c, req.GetFromSeq()); err != nil {
		if status.Code(err) != codes.Unknown {
			return err // the stream's own status (the caller went away)
		}
		a.cfg.Logger.Error("export audit log", slog.Any("error", err))
		return internal("export audit log: internal error")
	}
	return c.flush()
}
