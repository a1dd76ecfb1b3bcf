// Command paymentd is the reference payment backend: it serves the
// edgebridge.v1.Delivery stream, approves amounts up to -limit, and appends
// one JSON line per first-time message to -ledger, which it reloads on start
// so deduplication survives restarts.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"

	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/grpcout"
	"github.com/edgebridge/edgebridge/payment"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:7070", "gRPC listen address")
	ledgerPath := flag.String("ledger", "paymentd-ledger.jsonl", "ledger file (JSON lines)")
	limit := flag.Int64("limit", payment.DefaultLimit, "approve amounts up to this many minor units")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*listen, *ledgerPath, *limit, log); err != nil {
		log.Error("paymentd", "err", err)
		os.Exit(1)
	}
}

func run(listen, ledgerPath string, limit int64, log *slog.Logger) error {
	ledger, err := payment.OpenLedger(ledgerPath)
	if err != nil {
		return err
	}
	defer ledger.Close()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := backend.NewServer(backend.Config{ID: "paymentd"}, payment.Handler(limit), ledger, backend.WithLogger(log))
	gs := grpc.NewServer(grpc.KeepaliveEnforcementPolicy(grpcout.ServerEnforcement))
	srv.Register(gs)
	log.Info("paymentd listening", "addr", ln.Addr().String(), "ledger", ledgerPath, "entries", ledger.Len())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// Ask bridges to finish their window elsewhere, then stop.
		srv.Drain("paymentd shutting down")
		gs.GracefulStop()
	}()
	if err := gs.Serve(ln); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}
