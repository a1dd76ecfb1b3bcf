package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/devices"
	"github.com/edgebridge/edgebridge/siteca"
)

// siteDir is where a data directory keeps the site CA.
func siteDir(dataDir string) string { return filepath.Join(dataDir, "site") }

// configFlag adds -config to fs, by default $EDGEBRIDGE_CONFIG (the
// image sets it, so `docker compose exec edgebridge edgebridge device add
// ID` needs no flag).
func configFlag(fs *flag.FlagSet, usage string) *string {
	return fs.String("config", os.Getenv("EDGEBRIDGE_CONFIG"), usage+" (default $EDGEBRIDGE_CONFIG)")
}

// siteFlags adds -config and -data to fs; the function it returns gives
// the site directory they name, once fs is parsed, and the config when
// -config named one.
func siteFlags(fs *flag.FlagSet) func() (string, *config.Config, error) {
	path := configFlag(fs, "the bridge's config file: the site in kafka.data_dir/site")
	data := fs.String("data", "", "instead of -config: a data directory (broker mqtt -data); the site in DIR/site")
	return func() (string, *config.Config, error) {
		if *data != "" {
			return siteDir(*data), nil, nil
		}
		cfg, err := loadConfig(*path)
		if err != nil {
			return "", nil, err
		}
		return siteDir(cfg.Kafka.DataDir), &cfg, nil
	}
}

// siteCmd runs `edgebridge site ca`: it prints the CA certificate devices
// must trust, from the data directory of the process that serves MQTT.
func siteCmd(args []string) error {
	if len(args) == 0 || args[0] != "ca" {
		return errors.New("site: usage: edgebridge site ca [-config FILE | -data DIR]")
	}
	fs := flag.NewFlagSet("site ca", flag.ContinueOnError)
	site := siteFlags(fs)
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	dir, _, err := site()
	if err != nil {
		return err
	}
	s, err := siteca.Load(dir)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(s.CAPEM())
	return err
}

// siteIdentity is the embedded broker's TLS certificate from the site CA,
// renewed while the process runs.
type siteIdentity struct {
	cfg      siteca.Config
	log      *slog.Logger
	site     *siteca.Site
	notAfter atomic.Int64 // Unix seconds
}

// ensureSiteIdentity makes or loads the site CA and a current server
// certificate for names in dataDir.
func ensureSiteIdentity(dataDir string, names []string, log *slog.Logger) (*siteIdentity, error) {
	id := &siteIdentity{cfg: siteca.Config{Dir: siteDir(dataDir), Names: names}, log: log}
	if err := id.ensure(); err != nil {
		return nil, err
	}
	return id, nil
}

func (id *siteIdentity) ensure() error {
	s, made, err := siteca.Ensure(id.cfg)
	if err != nil {
		return fmt.Errorf("site CA: %w", err)
	}
	// The CRL is signed again, so it never goes stale while this runs.
	if err := devices.Open(id.cfg.Dir).Refresh(); err != nil {
		return fmt.Errorf("site CA: the CRL: %w", err)
	}
	id.site = s
	id.notAfter.Store(s.ServerNotAfter().Unix())
	switch made {
	case "ca":
		id.log.Info("edgebridge: made the site CA; devices must trust it (edgebridge site ca prints it), back up its key",
			"dir", id.cfg.Dir, "names", id.cfg.Names)
	case "renewed":
		id.log.Info("edgebridge: renewed the MQTT server certificate", "names", id.cfg.Names, "not_after", s.ServerNotAfter())
	}
	return nil
}

// expiry is when the server certificate expires.
func (id *siteIdentity) expiry() time.Time { return time.Unix(id.notAfter.Load(), 0) }

// keep renews the server certificate when it is due and signs the CRL
// again, twice a day, until ctx ends. The broker reads the files again
// when they change.
func (id *siteIdentity) keep(ctx context.Context) {
	t := time.NewTicker(12 * time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := id.ensure(); err != nil {
				id.log.Error("edgebridge: cannot renew the MQTT server certificate", "err", err, "not_after", id.expiry())
			}
		}
	}
}
