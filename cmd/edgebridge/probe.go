package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// probeCmd asks the admin endpoint whether the bridge is ready and exits 0
// if it is: the health check of an image that has no shell or curl. With
// -tcp it only checks that an address accepts connections (the brokers and
// paymentd in the same image have no admin endpoint).
func probeCmd(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	url := fs.String("url", "http://127.0.0.1:9464/readyz", "the endpoint to ask (/readyz: ready; /healthz: alive)")
	tcp := fs.String("tcp", "", "instead of -url: exit 0 when this host:port accepts a TCP connection")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if *tcp != "" {
		conn, err := new(net.Dialer).DialContext(ctx, "tcp", *tcp)
		if err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		conn.Close()
		fmt.Println(*tcp, "accepts connections")
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return errors.New("probe: " + resp.Status + ": " + strings.TrimSpace(string(body)))
	}
	fmt.Println(strings.TrimSpace(string(body)))
	return nil
}
