package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgebridge/edgebridge/config"
	"github.com/edgebridge/edgebridge/devices"
	"github.com/edgebridge/edgebridge/siteca"
)

const deviceUsage = `usage:
  edgebridge device add ID [-password-stdin]     a password for ID, printed once (or read from stdin)
  edgebridge device cert ID -out DIR [-csr FILE]  a client certificate from the site CA (for the CSR's key)
  edgebridge device remove ID                    refuse ID's logins and revoke its certificates
  edgebridge device list                         ID, kind, dates, last seen (by the embedded broker)
each with -config FILE (the bridge's: kafka.data_dir/site) or -data DIR (DIR/site)`

// deviceCmd provisions devices through the files the broker reads (package
// devices); it needs no shell, so it runs in the scratch image too
// (docker compose exec, kubectl exec).
func deviceCmd(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("device: " + deviceUsage)
	}
	sub := args[0]
	fs := flag.NewFlagSet("device "+sub, flag.ContinueOnError)
	site := siteFlags(fs)
	stdinPw := fs.Bool("password-stdin", false, "add: read the password from stdin instead of generating one")
	out := fs.String("out", "", "cert: the directory to write ID.pem (and ID.key, ca.pem) to")
	csr := fs.String("csr", "", "cert: sign this certificate request (PEM) instead of making a key")
	validity := fs.Duration("validity", siteca.DefaultClientValidity, "cert: how long the certificate is valid")
	// Flags may come before or after the id.
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	var id string
	if fs.NArg() > 0 {
		id = fs.Arg(0)
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return err
		}
	}
	if fs.NArg() > 0 || (id == "") != (sub == "list") {
		return errors.New("device: " + deviceUsage)
	}
	dir, cfg, err := site()
	if err != nil {
		return err
	}
	if f := passwordFile(cfg); f != "" && filepath.Clean(f) != filepath.Join(dir, devices.PasswordFile) {
		return fmt.Errorf("device: mqtt.embedded_auth.password_file is %s, but this command keeps passwords in %s: point the setting there",
			f, filepath.Join(dir, devices.PasswordFile))
	}
	r := devices.Open(dir)
	switch sub {
	case "add":
		pw := devices.NewPassword()
		if *stdinPw {
			line, err := bufio.NewReader(stdin).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			pw = strings.TrimRight(line, "\r\n")
		}
		if err := os.MkdirAll(dir, siteca.DirMode); err != nil {
			return err
		}
		if err := r.AddPassword(id, []byte(pw)); err != nil {
			return err
		}
		if *stdinPw {
			fmt.Fprintf(stdout, "device %s added\n", id)
		} else {
			fmt.Fprintf(stdout, "device %s added; its password (shown only now): %s\n", id, pw)
		}
	case "cert":
		if *out == "" {
			return errors.New("device cert: -out DIR is required")
		}
		var req []byte
		if *csr != "" {
			var err error
			if req, err = os.ReadFile(*csr); err != nil {
				return err
			}
		}
		certPEM, keyPEM, err := r.IssueCertificate(id, req, *validity)
		if err != nil {
			return err
		}
		ca, err := siteca.Load(dir)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(*out, 0o700); err != nil {
			return err
		}
		written := []string{filepath.Join(*out, id+".pem"), filepath.Join(*out, "ca.pem")}
		if err := os.WriteFile(written[0], certPEM, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(written[1], ca.CAPEM(), 0o644); err != nil {
			return err
		}
		if keyPEM != nil {
			written = append(written, filepath.Join(*out, id+".key"))
			if err := os.WriteFile(written[2], keyPEM, 0o600); err != nil {
				return err
			}
		}
		fmt.Fprintf(stdout, "device %s: wrote %s\n", id, strings.Join(written, ", "))
	case "remove":
		found, err := r.Remove(id)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("device remove: no device %s", id)
		}
		fmt.Fprintf(stdout, "device %s removed: its logins are refused and its certificates revoked\n", id)
	case "list":
		list, err := r.List()
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ID\tKIND\tCREATED\tEXPIRES\tLAST SEEN\tSERIAL")
		for _, d := range list {
			seen := "-"
			if !d.LastSeen.IsZero() {
				seen = d.LastSeen.UTC().Format("2006-01-02 15:04Z")
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Kind, day(d.Created), day(d.NotAfter), seen, d.Serial)
		}
		return w.Flush()
	default:
		return errors.New("device: " + deviceUsage)
	}
	return nil
}

// passwordFile is the embedded broker's password file in cfg, if any.
func passwordFile(cfg *config.Config) string {
	if cfg == nil || !cfg.EmbeddedMQTT() {
		return ""
	}
	return cfg.MQTT.EmbeddedAuth.PasswordFile
}

func day(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.DateOnly)
}
