package framework

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const postgresReadyTimeout = 30 * time.Second

// PostgresSuperuser is the superuser created by initdb.
const PostgresSuperuser = "postgres"

// Postgres is a PostgreSQL server from the distribution's packages, run as
// an unprivileged user (initdb refuses root) in a temp dir on 127.0.0.1.
type Postgres struct {
	Host string
	Port int
	// SuperuserPassword is the password of PostgresSuperuser (random per run).
	SuperuserPassword string
	Process           *Process
}

// postgresBinDir finds the directory holding initdb and postgres: PATH first,
// then /usr/local/bin, then the newest /usr/lib/postgresql/<v>/bin.
func postgresBinDir() (string, error) {
	candidates := []string{}
	if p, err := exec.LookPath("initdb"); err == nil {
		candidates = append(candidates, p)
	}
	candidates = append(candidates, "/usr/local/bin/initdb")
	versions, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(versions, func(i, j int) bool { return pgMajor(versions[i]) > pgMajor(versions[j]) })
	candidates = append(candidates, versions...)
	for _, c := range candidates {
		real, err := filepath.EvalSymlinks(c)
		if err != nil {
			continue
		}
		dir := filepath.Dir(real)
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
			return dir, nil
		}
	}
	return "", errors.New("initdb/postgres not found in PATH, /usr/local/bin or /usr/lib/postgresql/*/bin: run e2e/tools/install-deps.sh")
}

func pgMajor(path string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return n
}

// unprivileged returns the credential to run PostgreSQL under when we are
// root (the user "nobody"), or nil when we are not.
func unprivileged() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		return &syscall.Credential{Uid: 65534, Gid: 65534}, nil // the conventional uid of nobody
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("parse uid/gid of nobody: %q/%q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// StartPostgres runs initdb in a fresh temp dir and starts postgres on a free
// loopback port, waiting (30 s bound) until the superuser can log in.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	binDir, err := postgresBinDir()
	if err != nil {
		t.Fatal(err)
	}
	cred, err := unprivileged()
	if err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: its parent is 0700 root, which the unprivileged user
	// cannot traverse.
	dir, err := os.MkdirTemp("", "keywarden-e2e-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	password := randomString(24)
	if err := os.WriteFile(filepath.Join(dir, "pwfile"), []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		for _, p := range []string{dir, filepath.Join(dir, "pwfile")} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				t.Fatalf("chown %s: %v", p, err)
			}
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(binDir, "initdb"), "-D", data, "-U", PostgresSuperuser,
		"--pwfile="+filepath.Join(dir, "pwfile"), "--auth-local=trust", "--auth-host=scram-sha-256",
		"-E", "UTF8", "--locale=C", "--no-sync")
	initdb.Dir = dir
	initdb.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "LANG=C"}
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}

	pg := &Postgres{Host: "127.0.0.1", SuperuserPassword: password}
	err = retryOnAddrInUse(func() error {
		port, err := freePorts(1)
		if err != nil {
			return err
		}
		p, err := startProcess(t, "postgres", filepath.Join(binDir, "postgres"), []string{
			"-D", data, "-p", strconv.Itoa(port), "-h", "127.0.0.1", "-k", dir,
			"-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off",
			"-c", "log_connections=on", "-c", "shared_buffers=32MB", "-c", "max_connections=100",
		}, procOptions{Dir: dir, Credential: cred, StopSignal: syscall.SIGINT}) // SIGINT: fast shutdown, ignores open sessions
		if err != nil {
			return err
		}
		pg.Port = port
		if err := p.waitReady(postgresReadyTimeout, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			return pg.CanLogin(ctx, PostgresSuperuser, password)
		}); err != nil {
			return err
		}
		pg.Process = p
		return nil
	})
	if err != nil {
		t.Fatalf("start postgres: %v", err)
	}
	return pg
}

// Addr is host:port.
func (pg *Postgres) Addr() string { return net.JoinHostPort(pg.Host, strconv.Itoa(pg.Port)) }

// DSN returns a connection URL for a user of the "postgres" database.
func (pg *Postgres) DSN(username, password string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(username, password), Host: pg.Addr(), Path: "/postgres", RawQuery: "sslmode=disable"}
	return u.String()
}

// VaultConnectionURL is the templated URL Vault's database engine expects.
func (pg *Postgres) VaultConnectionURL() string {
	return "postgresql://{{username}}:{{password}}@" + pg.Addr() + "/postgres?sslmode=disable"
}

// CanLogin connects as username and runs SELECT 1. The error never includes
// the password.
func (pg *Postgres) CanLogin(ctx context.Context, username, password string) error {
	conn, err := pgx.Connect(ctx, pg.DSN(username, password))
	if err != nil {
		return fmt.Errorf("connect as %s: %w", username, redactErr(err, password))
	}
	defer conn.Close(context.Background())
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("select as %s: %w", username, redactErr(err, password))
	}
	return nil
}

// Exec runs SQL as the superuser.
func (pg *Postgres) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, pg.DSN(PostgresSuperuser, pg.SuperuserPassword))
	if err != nil {
		t.Fatalf("connect as superuser: %v", redactErr(err, pg.SuperuserPassword))
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("exec: %v", err)
	}
}
