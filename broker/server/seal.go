package server

import (
	"errors"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keywarden/keywarden/broker"
	"github.com/keywarden/keywarden/broker/grant"
	"github.com/keywarden/keywarden/broker/identity"
	"github.com/keywarden/keywarden/crypto"
	"github.com/keywarden/keywarden/internal/grpcx"
	keywardenv1 "github.com/keywarden/keywarden/proto/keywarden/v1"
)

// replySealer seals the secrets of one response or stream to the caller's reply key. A nil
// *replySealer leaves them in clear.
type replySealer struct {
	s     *crypto.ReplySealer
	who   string
	nonce []byte
	seq   uint64
}

// newReplySealer returns the sealer a request asks for (nil without a reply key) and the
// delivery the grants must allow: GRPCSealed for a sealed response, GRPC otherwise.
func newReplySealer(w identity.Workload, rk *keywardenv1.ReplyKey) (*replySealer, grant.Delivery, error) {
	if rk == nil {
		return nil, grant.DeliveryGRPC, nil
	}
	s, err := crypto.NewReplySealer(rk.GetPublicKey(), rk.GetNonce())
	if err != nil {
		return nil, "", replyKeyError(err)
	}
	return &replySealer{s: s, who: sealedFor(w), nonce: rk.GetNonce()}, grant.DeliveryGRPCSealed, nil
}

func replyKeyError(err error) error {
	msg, _ := strings.CutPrefix(err.Error(), crypto.ErrReplyKey.Error()+": ")
	return grpcx.Errorf(broker.ErrInvalidArgument, "reply_key: %s", msg)
}

// sealedFor names the caller in a sealed response: its SPIFFE ID, or
// namespace/serviceAccount/podUID without one.
func sealedFor(w identity.Workload) string {
	if !w.ID.IsZero() {
		return w.ID.String()
	}
	return w.Namespace + "/" + w.ServiceAccount + "/" + w.PodUID
}

// seal replaces p's data with its sealed form, numbered as the next message.
func (r *replySealer) seal(p *keywardenv1.Secret) error {
	if r == nil {
		return nil
	}
	r.seq++
	p.Seq, p.SealedFor = r.seq, r.who
	payload, err := proto.Marshal(&keywardenv1.SecretData{Data: p.GetData()})
	if err != nil {
		return errors.New("encode sealed payload")
	}
	ct, err := r.s.Seal(payload, replyContext(p, r.nonce))
	clear(payload)
	if err != nil {
		return replyKeyError(err)
	}
	p.Data, p.Sealed = nil, ct
	return nil
}

// replyContext is what p's sealed payload is bound to; the Go client builds the same.
func replyContext(p *keywardenv1.Secret, nonce []byte) crypto.ReplyContext {
	return crypto.ReplyContext{For: p.GetSealedFor(), Name: p.GetName(), Version: p.GetVersion(),
		ExpiresAt: unixNanos(p.GetExpiresAt()), RenewAfter: unixNanos(p.GetRenewAfter()), Nonce: nonce, Seq: p.GetSeq()}
}

func unixNanos(ts *timestamppb.Timestamp) int64 {
	if ts == nil {
		return 0
	}
	return ts.AsTime().UnixNano()
}
