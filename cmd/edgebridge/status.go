package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/edgebridge/edgebridge/bridge"
)

// statusCmd shows one bridge's /status: refreshed in place on a terminal,
// one snapshot otherwise (or with -once), the JSON itself with -json.
func statusCmd(args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	admin := fs.String("admin", "http://127.0.0.1:9464", "the bridge's admin endpoint")
	interval := fs.Duration("interval", 2*time.Second, "refresh interval on a terminal")
	once := fs.Bool("once", false, "print one snapshot and exit (also when the output is not a terminal)")
	asJSON := fs.Bool("json", false, "print the /status JSON once and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	url := strings.TrimSuffix(*admin, "/") + "/status"
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *asJSON {
		body, err := fetch(ctx, url)
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(body)
		return err
	}
	if *once || !isTerminal(os.Stdout) {
		s, err := fetchStatus(ctx, url)
		if err != nil {
			return err
		}
		return writeStatus(os.Stdout, s, nil)
	}
	var prev *bridge.Status
	t := time.NewTicker(*interval)
	defer t.Stop()
	for {
		s, err := fetchStatus(ctx, url)
		fmt.Print("\033[H\033[2J") // home, clear screen
		if err != nil {
			fmt.Printf("edgebridge status: %v (retrying every %s)\n", err, *interval)
		} else if err := writeStatus(os.Stdout, s, prev); err != nil {
			return err
		} else {
			prev = &s
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func fetch(ctx context.Context, url string) ([]byte, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status: GET %s: %s", url, resp.Status)
	}
	return body, nil
}

func fetchStatus(ctx context.Context, url string) (bridge.Status, error) {
	var s bridge.Status
	body, err := fetch(ctx, url)
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(body, &s); err != nil {
		return s, fmt.Errorf("status: %s is not a bridge status: %w", url, err)
	}
	return s, nil
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
