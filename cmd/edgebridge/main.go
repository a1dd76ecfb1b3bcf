// Command edgebridge bridges device requests from MQTT through Kafka to gRPC
// backends and their replies back to the devices.
//
//	edgebridge run [-config FILE]     run the bridge
//	edgebridge demo [flags]           everything in one process, with simulated devices
//	edgebridge bench [flags]          measure the pipeline against raw MQTT, Kafka and gRPC
//	edgebridge broker kafka|mqtt      run an embedded broker as its own process
//	edgebridge config defaults        every setting with its default and meaning
//	edgebridge validate -config FILE  check a config file, listing every problem
//	edgebridge probe [-url URL]       exit 0 when the bridge's admin endpoint says ready (-tcp: a port accepts)
//	edgebridge backend-check -target ADDR  check a backend against the Delivery contract
//	edgebridge status [-admin URL]    a live view of one bridge (/status)
//	edgebridge site ca [-config FILE] print the site CA certificate devices trust
//	edgebridge site mosquitto -names LIST  keep a site Mosquitto's certificate, CRL and bridge account
//	edgebridge device add|cert|remove|list  provision devices (passwords, certificates)
//	edgebridge version
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "run":
		err = runCmd(args)
	case "demo":
		err = demoCmd(args)
	case "bench":
		err = benchCmd(args)
	case "broker":
		err = brokerCmd(args)
	case "config":
		err = configCmd(args, os.Stdout)
	case "validate":
		err = validateCmd(args)
	case "probe":
		err = probeCmd(args)
	case "backend-check":
		err = backendCheckCmd(args)
	case "status":
		err = statusCmd(args)
	case "site":
		err = siteCmd(args)
	case "device":
		err = deviceCmd(args, os.Stdin, os.Stdout)
	case "version", "--version", "-version":
		printVersion()
	case "help", "-h", "--help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "edgebridge: unknown command %q\n", cmd)
		usage()
		os.Exit(2)
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		// -h: the command printed its flags; asking is not a failure.
	case err != nil:
		fmt.Fprintln(os.Stderr, "edgebridge:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  edgebridge run [-config FILE]      run the bridge (embedded brokers when no config)
  edgebridge demo [-devices N] [-requests N]
                                     embedded brokers + paymentd + simulated devices
  edgebridge bench [-duration D] [-json FILE] [-plot FILE] [-mqtt embedded]
                                     the pipeline measured against raw MQTT, Kafka and gRPC
  edgebridge broker kafka|mqtt [-listen ADDR] [-data DIR] [-partitions N]
                                     an embedded broker as its own process; data survives restarts
  edgebridge validate -config FILE   exit 0 if valid, else list every problem with its line
  edgebridge config defaults [-markdown]
                                     every setting with its default and meaning, as a valid config
  edgebridge probe [-url URL | -tcp ADDR]
                                     exit 0 when the admin endpoint says ready, or ADDR accepts
                                     connections (health checks in an image without a shell)
  edgebridge status [-admin URL] [-once] [-json]
                                     a live view of one bridge: brokers, backend streams, window, lag,
                                     rates, DLQ, recent errors (one snapshot when not on a terminal)
  edgebridge backend-check -target ADDR [-keepalive] [-tls-ca FILE] [-token-file FILE]
                                     check a backend against the Delivery contract (docs/BACKEND.md)
  edgebridge site ca [-config FILE | -data DIR]
                                     print the site CA certificate devices must trust
  edgebridge site mosquitto -names LIST [-once] [-config FILE | -data DIR]
                                     keep the files a site's Mosquitto reads (site CA, its server
                                     certificate, the CRL, the bridge's account), renewed
  edgebridge device add|cert|remove|list [ID] [-config FILE | -data DIR]
                                     provision devices: a password (printed once), a certificate
                                     from the site CA (-csr: for the device's own key), removal
  edgebridge version                 version, commit, build time and Go version (also --version)

-config defaults to $EDGEBRIDGE_CONFIG (the image sets it). Every command lists its flags with -h.
`)
}
