package csi

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
)

// TestDriver_Publish_tmpfsFull publishes a secret larger than the volume's tmpfs: the publish
// fails with ErrVolumeFull (ResourceExhausted to kubelet), nothing is left mounted or written,
// and the same secret fits once it is small enough.
func TestDriver_Publish_tmpfsFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount tmpfs; CI runs as root")
	}
	e := newEnv(t)
	e.mount = NewTmpfsMounter(64 << 10)
	e.start()
	e.b.set("big", "v1", map[string]string{"blob": strings.Repeat("x", 200<<10)})
	r, err := e.publish("p1", "secrets", map[string]string{AttrSecrets: "big"})
	if !errors.Is(err, ErrVolumeFull) {
		t.Fatalf("publish of 200 KiB into a 64 KiB volume: got %v, want ErrVolumeFull", err)
	}
	if st := toStatus(err); !strings.Contains(st.Error(), "ResourceExhausted") {
		t.Fatalf("status %v, want ResourceExhausted", st)
	}
	if _, err := os.Stat(r.TargetPath); !os.IsNotExist(err) {
		t.Fatalf("a failed first publish left the target behind: %v", err)
	}
	if e.d.Volumes() != 0 {
		t.Fatalf("volumes = %d after a failed publish", e.d.Volumes())
	}

	e.b.set("big", "v2", map[string]string{"blob": "small now"})
	r, err = e.publish("p1", "secrets", map[string]string{AttrSecrets: "big"})
	if err != nil {
		t.Fatalf("publish after the secret shrank: %v", err)
	}
	t.Cleanup(func() { _ = e.d.Unpublish(context.Background(), r.VolumeID, r.TargetPath) })
	if got := readFile(t, r.TargetPath+"/big/blob"); got != "small now" {
		t.Fatalf("file = %q", got)
	}
}
