package testlog

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

func TestBuffer_concurrentWritersAndReaders(t *testing.T) {
	var buf Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 50 {
				log.Info("line", slog.String("id", fmt.Sprintf("%d-%d", i, j)))
				_ = buf.String()
			}
		}()
	}
	wg.Wait()
	if got := strings.Count(buf.String(), "msg=line"); got != 400 {
		t.Fatalf("%d lines, want 400", got)
	}
}
