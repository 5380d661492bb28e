// Command perpod is the per-pod baseline of the node-scale scenario (e2e/scenario_test.go): the
// shape of the Secrets Store CSI driver's Vault provider or a Vault Agent sidecar, where every
// pod logs in to Vault with its own projected service-account token and reads its own secrets,
// polling at the same interval as the daemon. It runs as its own process so that the scenario
// can measure its memory; each simulated pod is a goroutine with its own vault/api client (its
// own HTTP transport and connections), so this is a lower bound for the real thing, where each
// pod also runs a process of its own.
//
// It reads a JSON Config on stdin, logs every pod in, reads each pod's dynamic credential once
// and its KV secrets once, prints {"ready":true} on stdout, and goes on polling every KV secret
// of every pod each interval (start times spread over one interval, like independently started
// pods) and renewing each lease at two thirds of its TTL. On SIGTERM or SIGINT it revokes the
// leases it holds, prints a Report as one JSON line and exits. Secrets and tokens are never
// printed.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

// Config is what the scenario sends on stdin.
type Config struct {
	VaultAddr string `json:"vaultAddr"`
	AuthPath  string `json:"authPath"` // e.g. "kubernetes"
	Role      string `json:"role"`
	Interval  string `json:"interval"`
	Pods      []Pod  `json:"pods"`
}

// Pod is one simulated pod: its projected token (audience of the Vault role) and what it reads.
type Pod struct {
	JWT string `json:"jwt"`
	// KV are logical read paths, e.g. "secret/data/app/api".
	KV []string `json:"kv"`
	// Dynamic are logical read paths of leased credentials, e.g. "database/creds/app".
	Dynamic []string `json:"dynamic"`
}

// Report is printed at exit.
type Report struct {
	Pods      int     `json:"pods"`
	Logins    int64   `json:"logins"`
	Reads     int64   `json:"reads"`
	Renewals  int64   `json:"renewals"`
	Errors    int64   `json:"errors"`
	Leases    int64   `json:"leases"`
	Revoked   int64   `json:"revoked"`
	ReadP50us float64 `json:"readP50us"`
	ReadP99us float64 `json:"readP99us"`
	// FirstError describes the first failure, without values.
	FirstError string `json:"firstError,omitempty"`
}

type stats struct {
	logins, reads, renewals, errors, leases, revoked atomic.Int64
	mu                                               sync.Mutex
	samples                                          []time.Duration
	firstErr                                         string
}

func (s *stats) fail(err error) {
	s.errors.Add(1)
	s.mu.Lock()
	if s.firstErr == "" {
		s.firstErr = err.Error()
	}
	s.mu.Unlock()
}

func (s *stats) sample(d time.Duration) {
	s.mu.Lock()
	s.samples = append(s.samples, d)
	s.mu.Unlock()
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "perpod:", err)
		os.Exit(1)
	}
}

func run() error {
	var cfg Config
	if err := json.NewDecoder(os.Stdin).Decode(&cfg); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	interval, err := time.ParseDuration(cfg.Interval)
	if err != nil || interval <= 0 {
		return fmt.Errorf("interval %q: want a positive duration", cfg.Interval)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	st := &stats{}
	pods := make([]*pod, len(cfg.Pods))
	var wg sync.WaitGroup
	for i, p := range cfg.Pods {
		pods[i] = &pod{cfg: p, st: st}
		wg.Go(func() {
			if err := pods[i].start(ctx, cfg); err != nil {
				st.fail(err)
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if n := st.errors.Load(); n > 0 {
		return fmt.Errorf("%d pods failed to start: %s", n, st.firstErr)
	}
	st.mu.Lock()
	st.samples = st.samples[:0] // the start burst is not the steady state
	st.mu.Unlock()
	if err := json.NewEncoder(os.Stdout).Encode(map[string]bool{"ready": true}); err != nil {
		return err
	}
	for _, p := range pods {
		wg.Go(func() { p.poll(ctx, interval) })
	}
	wg.Wait()
	rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, p := range pods {
		wg.Go(func() { p.revoke(rctx) })
	}
	wg.Wait()
	st.mu.Lock()
	samples := slices.Clone(st.samples)
	st.mu.Unlock()
	slices.Sort(samples)
	pct := func(q int) float64 {
		if len(samples) == 0 {
			return 0
		}
		return float64(samples[min(len(samples)-1, len(samples)*q/100)].Microseconds())
	}
	return json.NewEncoder(os.Stdout).Encode(Report{
		Pods: len(pods), Logins: st.logins.Load(), Reads: st.reads.Load(), Renewals: st.renewals.Load(),
		Errors: st.errors.Load(), Leases: st.leases.Load(), Revoked: st.revoked.Load(),
		ReadP50us: pct(50), ReadP99us: pct(99), FirstError: st.firstErr,
	})
}

type lease struct {
	id    string
	ttl   time.Duration
	renew time.Time
}

type pod struct {
	cfg    Pod
	st     *stats
	client *vaultapi.Client
	leases []*lease
}

// start logs in, reads the dynamic credentials and every KV secret once.
func (p *pod) start(ctx context.Context, cfg Config) error {
	vc := vaultapi.DefaultConfig() // a transport of its own, as a separate pod would have
	vc.Address = cfg.VaultAddr
	vc.Timeout = 30 * time.Second
	vc.MaxRetries = 2
	c, err := vaultapi.NewClient(vc)
	if err != nil {
		return fmt.Errorf("vault client: %w", err)
	}
	c.ClearToken()
	s, err := c.Logical().WriteWithContext(ctx, "auth/"+cfg.AuthPath+"/login", map[string]any{"role": cfg.Role, "jwt": p.cfg.JWT})
	if err != nil {
		return errors.New("login refused") // the error may quote the request
	}
	if s == nil || s.Auth == nil {
		return errors.New("login: no auth in the response")
	}
	p.st.logins.Add(1)
	c.SetToken(s.Auth.ClientToken)
	p.client = c
	for _, path := range p.cfg.Dynamic {
		s, err := c.Logical().ReadWithContext(ctx, path)
		if err != nil || s == nil {
			return fmt.Errorf("read %s failed", path)
		}
		p.st.leases.Add(1)
		ttl := time.Duration(s.LeaseDuration) * time.Second
		p.leases = append(p.leases, &lease{id: s.LeaseID, ttl: ttl, renew: time.Now().Add(ttl * 2 / 3)})
	}
	for _, path := range p.cfg.KV {
		if err := p.read(ctx, path); err != nil {
			return err
		}
	}
	return nil
}

func (p *pod) read(ctx context.Context, path string) error {
	start := time.Now()
	s, err := p.client.Logical().ReadWithContext(ctx, path)
	d := time.Since(start)
	if err != nil || s == nil {
		return fmt.Errorf("read %s failed", path)
	}
	p.st.reads.Add(1)
	p.st.sample(d)
	return nil
}

// poll re-reads the pod's KV secrets every interval, the first time after a random part of
// one, and renews its leases when due.
func (p *pod) poll(ctx context.Context, interval time.Duration) {
	t := time.NewTimer(rand.N(interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, path := range p.cfg.KV {
			if err := p.read(ctx, path); err != nil && ctx.Err() == nil {
				p.st.fail(err)
			}
		}
		for _, l := range p.leases {
			if time.Now().Before(l.renew) {
				continue
			}
			s, err := p.client.Sys().RenewWithContext(ctx, l.id, int(l.ttl/time.Second))
			if err != nil || s == nil {
				if ctx.Err() == nil {
					p.st.fail(errors.New("lease renewal failed"))
				}
				continue
			}
			p.st.renewals.Add(1)
			l.ttl = time.Duration(s.LeaseDuration) * time.Second
			l.renew = time.Now().Add(l.ttl * 2 / 3)
		}
		t.Reset(interval)
	}
}

func (p *pod) revoke(ctx context.Context) {
	if p.client == nil {
		return
	}
	for _, l := range p.leases {
		if err := p.client.Sys().RevokeWithContext(ctx, l.id); err != nil {
			p.st.fail(errors.New("lease revocation failed"))
			continue
		}
		p.st.revoked.Add(1)
	}
}
