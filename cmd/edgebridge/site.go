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
	"strings"
	"syscall"

	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/devices"
	"github.com/edgebridge/edgebridge/node"
	"github.com/edgebridge/edgebridge/siteca"
)

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
			return node.SiteDir(*data), nil, nil
		}
		cfg, err := loadConfig(*path)
		if err != nil {
			return "", nil, err
		}
		return node.SiteDir(cfg.Kafka.DataDir), &cfg, nil
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
	id, err := node.EnsureSite(dir, strings.Split(*names, ","), log)
	if err != nil {
		return err
	}
	pwFile := filepath.Join(dir, node.BridgePasswordFile)
	pw, err := node.GeneratedSecret(pwFile)
	if err != nil {
		return fmt.Errorf("site mosquitto: the bridge's password: %w", err)
	}
	if err := devices.Open(dir).SetAccount(siteca.BridgeUser, []byte(pw)); err != nil {
		return fmt.Errorf("site mosquitto: the bridge's account: %w", err)
	}
	log.Info("edgebridge: site files ready for Mosquitto", "dir", dir, "bridge_user", siteca.BridgeUser, "bridge_password_file", pwFile,
		"server_cert_not_after", id.Expiry())
	if *once {
		return nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	id.Keep(ctx)
	return nil
}
