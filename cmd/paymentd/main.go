// Command paymentd is the reference payment backend: it serves the
// edgebridge.v1.Delivery stream, approves amounts up to -limit, and appends
// one JSON line per first-time message to -ledger, which it reloads on start
// so deduplication survives restarts.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/backend"
	"github.com/edgebridge/edgebridge/grpcmetrics"
	"github.com/edgebridge/edgebridge/payment"
	"github.com/edgebridge/edgebridge/tracing"
)

type flags struct {
	listen, ledger, metrics    string
	limit                      int64
	credits                    uint
	maxConnAge, delay          time.Duration
	tlsCert, tlsKey, tokenFile string
	tlsClientCA                string
	traceEndpoint              string
	traceRatio                 float64
}

func main() {
	var f flags
	flag.StringVar(&f.listen, "listen", "127.0.0.1:7070", "gRPC listen address")
	flag.StringVar(&f.ledger, "ledger", "paymentd-ledger.jsonl", "ledger file (JSON lines)")
	flag.Int64Var(&f.limit, "limit", payment.DefaultLimit, "approve amounts up to this many minor units")
	flag.StringVar(&f.metrics, "metrics", "", "serve Prometheus /metrics on this address (off if empty)")
	flag.UintVar(&f.credits, "credits", 0, "un-ACKed deliveries each bridge stream may have (0: the bridge's window)")
	flag.DurationVar(&f.maxConnAge, "max-connection-age", 0, "close connections after this age with GOAWAY (0: never)")
	flag.DurationVar(&f.delay, "delay", 0, "spend this long on every payment (simulates a slow backend)")
	flag.StringVar(&f.tlsCert, "tls-cert", "", "serve TLS with this certificate (PEM)")
	flag.StringVar(&f.tlsKey, "tls-key", "", "private key of -tls-cert (PEM)")
	flag.StringVar(&f.tlsClientCA, "tls-client-ca", "", "require bridges to present a client certificate these CAs (PEM) signed: mutual TLS")
	flag.StringVar(&f.tokenFile, "token-file", "", "require this bearer token from bridges (needs TLS)")
	flag.StringVar(&f.traceEndpoint, "tracing-endpoint", "", "send OpenTelemetry spans to this OTLP/gRPC collector, host:port (off if empty)")
	flag.Float64Var(&f.traceRatio, "tracing-sample-ratio", 1, "ratio of new traces recorded (requests follow the bridge's decision)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(f, log); err != nil {
		log.Error("paymentd", "err", err)
		os.Exit(1)
	}
}

func serverOptions(f flags, m *grpcmetrics.Server) ([]grpc.ServerOption, error) {
	opts := []grpc.ServerOption{grpc.StatsHandler(m)}
	if f.maxConnAge > 0 {
		opts = append(opts, grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: f.maxConnAge, MaxConnectionAgeGrace: time.Minute}))
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	if f.tlsClientCA != "" && f.tlsCert == "" {
		return nil, errors.New("-tls-client-ca needs -tls-cert and -tls-key")
	}
	if f.tlsCert != "" {
		creds, err := backend.ServerTLS(f.tlsCert, f.tlsKey, f.tlsClientCA)
		if err != nil {
			return nil, err
		}
		opts = append(opts, creds)
	}
	if f.tokenFile != "" {
		if f.tlsCert == "" {
			return nil, errors.New("-token-file needs TLS")
		}
		if _, err := backend.ReadTokenFile(f.tokenFile); err != nil {
			return nil, err
		}
		// Read again at every call: a rotated token needs no restart.
		opts = append(opts, backend.TokenFileAuth(f.tokenFile)...)
	}
	return opts, nil
}

func run(f flags, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	m := grpcmetrics.NewServer(reg)
	opts, err := serverOptions(f, m)
	if err != nil {
		return err
	}
	ledger, err := payment.OpenLedger(f.ledger)
	if err != nil {
		return err
	}
	defer ledger.Close()
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return err
	}
	handler := payment.Handler(f.limit)
	if f.delay > 0 {
		fast := handler
		handler = func(ctx context.Context, env *v1.Envelope) backend.Result {
			t := time.NewTimer(f.delay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			return fast(ctx, env)
		}
	}
	tp, stopTracing, err := tracing.Setup(tracing.Config{Endpoint: f.traceEndpoint, SampleRatio: f.traceRatio, Service: "paymentd"})
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = stopTracing(ctx) // flush the last spans
	}()
	srv := backend.NewServer(backend.Config{ID: "paymentd", Credits: uint32(f.credits)}, handler, ledger,
		backend.WithLogger(log), backend.WithTracerProvider(tp))
	gs := backend.NewGRPCServer(opts...)
	srv.Register(gs)
	log.Info("paymentd listening", "addr", ln.Addr().String(), "ledger", f.ledger, "entries", ledger.Len())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if f.metrics != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		hs := &http.Server{Addr: f.metrics, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := hs.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("paymentd: metrics", "err", err)
			}
		}()
		defer hs.Close()
	}
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
