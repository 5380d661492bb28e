package server

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keywarden/keywarden/broker/audit"
	"github.com/keywarden/keywarden/broker/keyrot"
	"github.com/keywarden/keywarden/internal/grpcx"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// KeyRotator starts rotations of the stores' keys and reports them.
type KeyRotator interface {
	Start(k keyrot.Kinds) error
	Status() keyrot.Status
}

var _ KeyRotator = (*keyrot.Manager)(nil)

var (
	errNoKeyRotator = grpcx.Errorf(grpcx.ErrFailedPrecondition, "this daemon cannot rotate its keys")
	errKeysBusy     = grpcx.Errorf(grpcx.ErrFailedPrecondition, "a key rotation is already running: follow it with the rotation status")
)

// RotateKeys implements keywardenv1.AdminServiceServer.
func (a *AdminService) RotateKeys(ctx context.Context, req *keywardenv1.RotateKeysRequest) (*keywardenv1.RotateKeysResponse, error) {
	if a.cfg.Keys == nil {
		return nil, errNoKeyRotator
	}
	k := keyrot.Kinds{DEK: req.GetDek(), KEK: req.GetKek()}
	note(ctx, func(ev *audit.Event) { ev.Reason = "rotate " + k.String() })
	switch err := a.cfg.Keys.Start(k); {
	case errors.Is(err, keyrot.ErrNothingToRotate):
		return nil, invalid("name the keys to rotate: dek, kek or both")
	case errors.Is(err, keyrot.ErrBusy):
		return nil, errKeysBusy
	case err != nil:
		a.cfg.Logger.Error("start key rotation failed", slog.Any("error", err))
		return nil, internal("rotate keys: internal error")
	}
	return &keywardenv1.RotateKeysResponse{Status: rotationToProto(a.cfg.Keys.Status())}, nil
}

// RotationStatus implements keywardenv1.AdminServiceServer.
func (a *AdminService) RotationStatus(context.Context, *keywardenv1.RotationStatusRequest) (*keywardenv1.RotationStatusResponse, error) {
	if a.cfg.Keys == nil {
		return nil, errNoKeyRotator
	}
	return rotationToProto(a.cfg.Keys.Status()), nil
}

func rotationToProto(st keyrot.Status) *keywardenv1.RotationStatusResponse {
	out := &keywardenv1.RotationStatusResponse{
		Resumed: st.Resumed, LastError: st.LastError, KekProvider: st.Provider, KekKeys: uint32(st.KEKKeys),
	}
	switch {
	case st.Running:
		out.State = "running"
	case st.Started.IsZero():
		out.State = "idle"
	case st.LastError != "":
		out.State = "failed"
	default:
		out.State = "done"
	}
	if !st.Started.IsZero() {
		out.What = st.Kinds.String()
		out.StartedAt = timestamppb.New(st.Started)
	}
	if !st.Finished.IsZero() {
		out.FinishedAt = timestamppb.New(st.Finished)
	}
	for _, s := range st.Stores {
		out.Stores = append(out.Stores, &keywardenv1.StoreKeys{
			Name: s.Name, PrimaryKeyId: s.PrimaryKeyID, KeyIds: s.KeyIDs, WrappedBy: s.WrappedBy,
			Records: uint64(s.Records), StaleRecords: uint64(s.Stale), ResealPending: s.ResealPending,
			Resealed: uint64(s.Resealed), Error: s.Err,
		})
	}
	return out
}
