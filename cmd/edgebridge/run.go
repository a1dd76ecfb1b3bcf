package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/node"
)

func loadConfig(path string) (config.Config, error) {
	if path == "" {
		return config.Default(), nil
	}
	return config.Load(path)
}

func validateCmd(args []string) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	path := configFlag(fs, "config file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return errors.New("validate: -config (or $EDGEBRIDGE_CONFIG) is required")
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintln(os.Stderr, "warning:", w)
	}
	fmt.Println("config ok")
	return nil
}

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	path := configFlag(fs, "config file; none: embedded brokers, backend 127.0.0.1:7070")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log)
	for _, w := range cfg.Warnings() {
		log.Warn("edgebridge: insecure setting: " + w)
	}
	ctx := shutdownContext(log)
	return node.Run(ctx, cfg, log, node.WithBuildInfo(buildInfo()))
}

// newLogger writes to stderr as log.format and log.level say.
func newLogger(c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level)) // validated: debug, info, warn, error
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// shutdownContext ends on the first SIGINT/SIGTERM (graceful drain); a
// second signal exits at once. Nothing is lost either way: what was not
// committed is redelivered on the next start.
func shutdownContext(log *slog.Logger) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		log.Info("edgebridge: draining; signal again to abort", "signal", s.String())
		cancel()
		<-sigs
		log.Warn("edgebridge: aborted")
		os.Exit(130)
	}()
	return ctx
}

// configCmd runs `edgebridge config defaults`: every setting with its
// default and meaning, as YAML that is itself a valid config (-markdown:
// docs/CONFIGURATION.md).
func configCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "defaults" {
		return errors.New("config: usage: edgebridge config defaults [-markdown]")
	}
	fs := flag.NewFlagSet("config defaults", flag.ContinueOnError)
	markdown := fs.Bool("markdown", false, "as docs/CONFIGURATION.md")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	out := config.DefaultsYAML()
	if *markdown {
		out = config.DefaultsMarkdown()
	}
	_, err := stdout.Write(out)
	return err
}
