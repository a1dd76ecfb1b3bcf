package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/conformance"
	"github.com/edgebridge/edgebridge/grpcout"
	"github.com/edgebridge/edgebridge/internal/tlsfiles"
)

// backendCheckCmd runs the conformance check against a backend and prints
// its table; it fails when a required rule fails.
func backendCheckCmd(args []string) error {
	fs := flag.NewFlagSet("backend-check", flag.ContinueOnError)
	target := fs.String("target", "", "the backend's host:port (required)")
	timeout := fs.Duration("timeout", 10*time.Second, "the longest wait for any answer (welcome, pong, ack)")
	window := fs.Int("window", 16, "Hello.window to send: the most deliveries in flight")
	keep := fs.Bool("keepalive", false, "also check the keepalive policy: an idle connection pinged every 10s must stay up (about a minute)")
	tlsOn := fs.Bool("tls", false, "connect with TLS (implied by -tls-ca, -tls-cert)")
	ca := fs.String("tls-ca", "", "PEM file of the CAs that sign the backend's certificate (default: system roots)")
	cert := fs.String("tls-cert", "", "client certificate PEM, for a backend that requires one")
	key := fs.String("tls-key", "", "client key PEM")
	serverName := fs.String("tls-server-name", "", "name to verify in the backend's certificate (default: the target's host)")
	tokenFile := fs.String("token-file", "", "file with the bearer token to send (needs TLS)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" {
		fs.Usage()
		return errors.New("backend-check: -target is required")
	}
	var opts []grpc.DialOption
	if *tlsOn || *ca != "" || *cert != "" {
		tc, err := tlsfiles.Files{CAFile: *ca, CertFile: *cert, KeyFile: *key, ServerName: *serverName}.Client()
		if err != nil {
			return fmt.Errorf("backend-check: %w", err)
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	} else {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if *tokenFile != "" {
		token, err := backend.ReadTokenFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("backend-check: %w", err)
		}
		opts = append(opts, grpc.WithPerRPCCredentials(grpcout.Bearer(func() (string, error) { return token, nil })))
	}
	dial := func(extra ...grpc.DialOption) (*grpc.ClientConn, error) {
		return grpc.NewClient(*target, append(append([]grpc.DialOption{}, opts...), extra...)...)
	}
	conn, err := dial()
	if err != nil {
		return fmt.Errorf("backend-check: %w", err)
	}
	defer conn.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	fmt.Printf("edgebridge backend-check %s\n\n", *target)
	rep := conformance.Run(ctx, conn, conformance.Options{Timeout: *timeout, Window: *window, Keepalive: *keep, Dial: dial})
	if err := rep.Write(os.Stdout); err != nil {
		return err
	}
	if failed := rep.Failed(); len(failed) > 0 {
		return fmt.Errorf("backend-check: %d required rule(s) failed: %s", len(failed), strings.Join(failed, ", "))
	}
	fmt.Println("\nall required rules pass")
	return nil
}
