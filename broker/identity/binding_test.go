package identity

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type fakePods struct {
	pods   map[string]Pod
	synced bool
}

func (f fakePods) PodByUID(uid string) (Pod, bool) { p, ok := f.pods[uid]; return p, ok }
func (f fakePods) Synced() bool                    { return f.synced }

type fakeServiceAccounts struct {
	uids   map[string]string // namespace/name → UID
	synced bool
}

func (f fakeServiceAccounts) ServiceAccountUID(namespace, name string) (string, bool) {
	uid, ok := f.uids[namespace+"/"+name]
	return uid, ok
}
func (f fakeServiceAccounts) Synced() bool { return f.synced }

func TestBindingVerifier_Verify(t *testing.T) {
	base := Workload{Namespace: "demo", ServiceAccount: "app", ServiceAccountUID: "sa-1", PodName: "p", PodUID: "u1", NodeName: "node-1"}
	pod := Pod{Namespace: "demo", Name: "p", UID: "u1", NodeName: "node-1", ServiceAccount: "app"}
	liveSA := fakeServiceAccounts{uids: map[string]string{"demo/app": "sa-1"}, synced: true}
	tests := []struct {
		name    string
		w       func(*Workload)
		pods    fakePods
		sas     *fakeServiceAccounts // nil: liveSA
		reason  string
		unavail bool
	}{
		{name: "ok", pods: fakePods{pods: map[string]Pod{"u1": pod}, synced: true}},
		{name: "no node claim, pod on node", w: func(w *Workload) { w.NodeName = "" }, pods: fakePods{pods: map[string]Pod{"u1": pod}, synced: true}},
		{name: "token for another node", w: func(w *Workload) { w.NodeName = "node-2" }, pods: fakePods{pods: map[string]Pod{"u1": pod}, synced: true}, reason: ReasonOtherNode},
		{name: "pod deleted", pods: fakePods{pods: map[string]Pod{}, synced: true}, reason: ReasonPodNotOnNode},
		{name: "pod on another node", pods: fakePods{pods: map[string]Pod{"u1": {Namespace: "demo", Name: "p", UID: "u1", NodeName: "node-2"}}, synced: true}, reason: ReasonPodNotOnNode},
		{name: "pod name differs", w: func(w *Workload) { w.PodName = "q" }, pods: fakePods{pods: map[string]Pod{"u1": pod}, synced: true}, reason: ReasonPodMismatch},
		{name: "pod of another service account", w: func(w *Workload) { w.ServiceAccount = "other" }, pods: fakePods{pods: map[string]Pod{"u1": pod}, synced: true}, reason: ReasonPodMismatch},
		{name: "no pod binding", w: func(w *Workload) { w.PodUID = "" }, pods: fakePods{synced: true}, reason: ReasonNoPodBinding},
		{name: "pods not loaded yet", pods: fakePods{}, unavail: true},
		{name: "service account recreated with the same name", pods: fakePods{pods: map[string]Pod{"u1": pod}, synced: true},
			sas: &fakeServiceAccounts{uids: map[string]string{"demo/app": "sa-2"}, synced: true}, reason: ReasonServiceAccountRecreated},
		{name: "service account deleted", pods: fakePods{pods: map[string]Pod{"u1": pod}, synced: true},
			sas: &fakeServiceAccounts{uids: map[string]string{}, synced: true}, reason: ReasonServiceAccountRecreated},
		{name: "same UID in another namespace is not the account", w: func(w *Workload) { w.Namespace = "other" },
			pods:   fakePods{pods: map[string]Pod{"u1": {Namespace: "other", Name: "p", UID: "u1", NodeName: "node-1", ServiceAccount: "app"}}, synced: true},
			reason: ReasonServiceAccountRecreated},
		{name: "no service account UID", w: func(w *Workload) { w.ServiceAccountUID = "" }, pods: fakePods{pods: map[string]Pod{"u1": pod}, synced: true}, reason: ReasonInvalidSA},
		{name: "service accounts not loaded yet", pods: fakePods{pods: map[string]Pod{"u1": pod}, synced: true},
			sas: &fakeServiceAccounts{}, unavail: true},
		{name: "service accounts loading, account known", pods: fakePods{pods: map[string]Pod{"u1": pod}, synced: true},
			sas: &fakeServiceAccounts{uids: map[string]string{"demo/app": "sa-1"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := base
			if tc.w != nil {
				tc.w(&w)
			}
			sas := liveSA
			if tc.sas != nil {
				sas = *tc.sas
			}
			b, err := NewBindingVerifier(BindingConfig{Verifier: &countingVerifier{w: w}, Pods: tc.pods, ServiceAccounts: sas, NodeName: "node-1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			_, err = b.Verify(context.Background(), NewToken("t"))
			var ve *VerifyError
			switch {
			case tc.unavail:
				if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrInvalidToken) {
					t.Fatalf("got %v, want ErrUnavailable", err)
				}
			case tc.reason == "":
				if err != nil {
					t.Fatal(err)
				}
			case !errors.As(err, &ve) || ve.Reason != tc.reason:
				t.Fatalf("got %v, want reason %q", err, tc.reason)
			}
		})
	}
}

type fakeReviewer struct {
	status authnv1.TokenReviewStatus
	err    error
	sent   *authnv1.TokenReview
}

func (f *fakeReviewer) Create(_ context.Context, tr *authnv1.TokenReview, _ metav1.CreateOptions) (*authnv1.TokenReview, error) {
	f.sent = tr
	if f.err != nil {
		return nil, f.err
	}
	return &authnv1.TokenReview{Status: f.status}, nil
}

func TestTokenReviewVerifier_Verify(t *testing.T) {
	okUser := authnv1.UserInfo{Username: "system:serviceaccount:demo:app", UID: "sa-uid", Extra: map[string]authnv1.ExtraValue{
		extraPodName: {"p"}, extraPodUID: {"u1"}, extraNode: {"node-1"}, extraNodeUID: {"n1"},
	}}
	tok := NewToken(signES(t, validClaims()))
	tests := []struct {
		name    string
		r       fakeReviewer
		tok     Token
		reason  string
		unavail bool
	}{
		{name: "ok", r: fakeReviewer{status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"keywarden"}, User: okUser}}, tok: tok},
		{name: "rejected", r: fakeReviewer{status: authnv1.TokenReviewStatus{Authenticated: false, Error: "token expired"}}, tok: tok, reason: ReasonRejectedByReview},
		{name: "audience not echoed", r: fakeReviewer{status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"https://kubernetes.default.svc"}, User: okUser}}, tok: tok, reason: ReasonWrongAudience},
		{name: "not a service account", r: fakeReviewer{status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"keywarden"}, User: authnv1.UserInfo{Username: "alice"}}}, tok: tok, reason: ReasonInvalidSA},
		{name: "legacy token without pod", r: fakeReviewer{status: authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"keywarden"}, User: authnv1.UserInfo{Username: "system:serviceaccount:demo:app"}}}, tok: tok, reason: ReasonNoPodBinding},
		{name: "apiserver down", r: fakeReviewer{err: errors.New("connection refused")}, tok: tok, unavail: true},
		{name: "oversized never sent", r: fakeReviewer{}, tok: NewToken(string(make([]byte, DefaultMaxTokenSize+1))), reason: ReasonTooLarge},
		{name: "not a JWT never sent", r: fakeReviewer{}, tok: NewToken("abc"), reason: ReasonMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := NewTokenReviewVerifier(TokenReviewConfig{Reviewer: &tc.r, TrustDomain: spiffeid.RequireTrustDomainFromString("td")})
			if err != nil {
				t.Fatal(err)
			}
			w, err := v.Verify(context.Background(), tc.tok)
			var ve *VerifyError
			switch {
			case tc.unavail:
				if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrInvalidToken) {
					t.Fatalf("got %v", err)
				}
			case tc.reason == "":
				if err != nil {
					t.Fatal(err)
				}
				// The apiserver answers with the service account's UID, which the node
				// binding compares with the live account.
				if w.PodUID != "u1" || w.NodeName != "node-1" || w.ServiceAccountUID != "sa-uid" || w.ID.String() != "spiffe://td/ns/demo/sa/app" || w.ExpiresAt.IsZero() {
					t.Fatalf("workload %+v", w)
				}
				if tc.r.sent == nil || len(tc.r.sent.Spec.Audiences) != 1 || tc.r.sent.Spec.Audiences[0] != "keywarden" {
					t.Fatal("audiences not sent with the review")
				}
			case !errors.As(err, &ve) || ve.Reason != tc.reason:
				t.Fatalf("got %v, want %q", err, tc.reason)
			}
			if tc.reason == ReasonTooLarge || tc.reason == ReasonMalformed {
				if tc.r.sent != nil {
					t.Fatal("a token that cannot be valid was sent to the apiserver")
				}
			}
		})
	}
}
