package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
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

const siteUsage = `usage:
  edgebridge site ca [-config FILE | -data DIR]
      print the site CA certificate devices must trust
  edgebridge site mosquitto -names LIST [-once] [-config FILE | -data DIR]
      keep the files a site's Mosquitto reads in the site directory`

// siteCmd runs `edgebridge site ca|mosquitto`.
func siteCmd(args []string) error {
	switch {
	case len(args) > 0 && args[0] == "ca":
		return siteCACmd(args[1:])
	case len(args) > 0 && args[0] == "mosquitto":
		return siteMosquittoCmd(args[1:])
	}
	return errors.New("site: " + siteUsage)
}

// siteCACmd runs `edgebridge site ca`: it prints the CA certificate devices
// must trust, from the data directory of the process that serves MQTT.
func siteCACmd(args []string) error {
	fs := flag.NewFlagSet("site ca", flag.ContinueOnError)
	site := siteFlags(fs)
	if err := fs.Parse(args); err != nil {
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

// siteMosquittoCmd runs `edgebridge site mosquitto`: for a site whose
// devices connect to Mosquitto, it makes and keeps the files Mosquitto
// reads in the site directory, as the embedded broker's process does for
// itself: the site CA, Mosquitto's server certificate for -names (renewed
// before it expires), the CRL (signed again twice a day) and the bridge's
// account (a password generated into bridge.password, for the bridge's
// mqtt.password_file, and its hash in passwd next to the devices'). It
// runs until SIGINT or SIGTERM, beside Mosquitto (a sidecar); Mosquitto's
// start script (first-start.sh) reloads it when the files change.
func siteMosquittoCmd(args []string) error {
	fs := flag.NewFlagSet("site mosquitto", flag.ContinueOnError)
	site := siteFlags(fs)
	names := fs.String("names", "", "comma-separated names and addresses devices dial, for Mosquitto's server certificate (required)")
	once := fs.Bool("once", false, "make or renew the files, then exit instead of keeping them renewed")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, _, err := site()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	id, err := ensureSiteIdentity(dir, strings.Split(*names, ","), log)
	if err != nil {
		return err
	}
	pwFile := filepath.Join(dir, bridgePasswordFile)
	pw, err := generatedSecret(pwFile)
	if err != nil {
		return fmt.Errorf("site mosquitto: the bridge's password: %w", err)
	}
	if err := devices.Open(dir).SetAccount(siteca.BridgeUser, []byte(pw)); err != nil {
		return fmt.Errorf("site mosquitto: the bridge's account: %w", err)
	}
	log.Info("edgebridge: site files ready for Mosquitto", "dir", dir, "bridge_user", siteca.BridgeUser, "bridge_password_file", pwFile,
		"server_cert_not_after", id.expiry())
	if *once {
		return nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	id.keep(ctx)
	return nil
}

// siteIdentity is the MQTT broker's TLS certificate from the site CA,
// renewed while the process runs.
type siteIdentity struct {
	cfg      siteca.Config
	log      *slog.Logger
	site     *siteca.Site
	notAfter atomic.Int64 // Unix seconds
}

// ensureSiteIdentity makes or loads the site CA in the site directory dir
// and a current server certificate for names (empty ones dropped).
func ensureSiteIdentity(dir string, names []string, log *slog.Logger) (*siteIdentity, error) {
	names = slices.DeleteFunc(names, func(n string) bool { return strings.TrimSpace(n) == "" })
	id := &siteIdentity{cfg: siteca.Config{Dir: dir, Names: names}, log: log}
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
