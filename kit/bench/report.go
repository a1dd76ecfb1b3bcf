package bench

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
)

// WriteTable writes the report as aligned text tables.
func (r *Report) WriteTable(w io.Writer) error {
	s := r.Setup
	fmt.Fprintf(w, "edgebridge bench: %s, kafka %s (%s), %d devices x %d outstanding, %d B QoS 1, %s in %d rounds; %d CPUs (%s), %s\n\n",
		s.MQTT, s.Kafka, s.Durability, s.Devices, s.Outstanding, s.PayloadSize, s.Duration, s.Rounds, s.CPUs, s.CPUModel, s.GoVersion)
	if len(r.Responders) > 0 {
		steps := make([]string, len(r.Responders))
		for i, st := range r.Responders {
			steps[i] = fmt.Sprintf("%d: %.0f", st.Responders, st.Throughput)
		}
		fmt.Fprintf(w, "mqtt raw: the broker crossed twice, %d responders sharing one subscription (msg/s as each was added: %s)\n\n",
			s.Responders, strings.Join(steps, ", "))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tdevices\toutstanding\tmsgs\tmsg/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\tlost\tbridge CPU ms/1k\tbridge RSS MB\tgoroutines\t")
	rows := append(append([]Scenario{}, r.Scenarios...), r.Curve...)
	for _, sc := range rows {
		name := sc.Name
		if sc.OfferedRate > 0 {
			name = fmt.Sprintf("%s @%.0f/s", name, sc.OfferedRate)
		}
		bridge := []string{"-", "-", "-"}
		if sc.BridgeRSSMax > 0 {
			bridge = []string{fmt.Sprintf("%.0f", sc.CPU["bridge"]), fmt.Sprintf("%.1f", float64(sc.BridgeRSSMax)/(1<<20)), fmt.Sprint(sc.BridgeGoroutinesMax)}
		}
		devices := "-"
		if sc.Devices > 0 {
			devices = fmt.Sprint(sc.Devices)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t%s\t\n", name, devices, sc.Outstanding, sc.Messages, sc.Throughput,
			sc.Latency.P50, sc.Latency.P90, sc.Latency.P99, sc.Latency.Max, sc.Lost, strings.Join(bridge, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if r.ShippedThroughput > 0 {
		fmt.Fprintln(w, "\n\"as shipped\": edgebridge run with both brokers in-process (devices on its MQTT listener, Kafka fsync); its bridge columns are the whole node's")
	}

	fmt.Fprintln(w, "\nthe middle of the path, bridge MQTT receipt -> paymentd (MQTT -> Kafka -> gRPC):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tp50 ms\tp90 ms\tp99 ms\tmax ms\t")
	for _, sc := range rows {
		if sc.ToBackend == nil {
			continue
		}
		name := sc.Name
		if sc.OfferedRate > 0 {
			name = fmt.Sprintf("%s @%.0f/s", name, sc.OfferedRate)
		}
		l := sc.ToBackend
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.2f\t\n", name, l.P50, l.P90, l.P99, l.Max)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if err := writeStages(w, rows); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nCPU ms per 1,000 messages, by process:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	procs := []string{"bridge", "mosquitto", "kafka", "bench"}
	fmt.Fprintln(tw, "scenario\t"+strings.Join(procs, "\t")+"\t")
	for _, sc := range r.Scenarios {
		fmt.Fprintf(tw, "%s", sc.Name)
		for _, p := range procs {
			if v, ok := sc.CPU[p]; ok {
				fmt.Fprintf(tw, "\t%.0f", v)
			} else {
				fmt.Fprint(tw, "\t-")
			}
		}
		fmt.Fprintln(tw, "\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if f := r.Footprint; f.BinaryBytes > 0 {
		fmt.Fprintf(w, "\nthe node as shipped (edgebridge run, brokers in-process), before a message arrives:\n")
		fmt.Fprintf(w, "  exec to /readyz 200, empty data dir: %.0f ms (median of %v)\n", f.ReadyMillis, f.ReadyRuns)
		fmt.Fprintf(w, "  idle for %s: RSS %.1f MB (%.1f MB of it anonymous, the rest the binary's pages), %d goroutines, CPU %.2f %% of a core; binary %.1f MB\n",
			f.IdleFor, float64(f.IdleRSSBytes)/(1<<20), float64(f.IdleAnonBytes)/(1<<20), f.IdleGoroutines, f.IdleCPUPercent, float64(f.BinaryBytes)/(1<<20))
	}

	fmt.Fprintln(w, "\ntargets:")
	for _, t := range r.Targets {
		mark := "met"
		if !t.Met {
			mark = "NOT MET"
		}
		fmt.Fprintf(w, "  %-55s want %-6s got %8.2f  %s\n", t.Name, t.Want, t.Got, mark)
	}
	return nil
}

// WriteJSON writes the report to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// WritePlot writes an SVG of latency (p50, p90, p99) against throughput
// from the open-loop steps, with the closed-loop full-load point and the
// raw MQTT baseline's throughput marked.
func (r *Report) WritePlot(w io.Writer) error {
	const (
		width, height          = 720, 420
		left, right, top, bott = 70, 30, 40, 60
	)
	type point struct{ x, y float64 }
	series := []struct {
		name, color string
		pick        func(Latency) float64
	}{
		{"p50", "#1f77b4", func(l Latency) float64 { return l.P50 }},
		{"p90", "#ff7f0e", func(l Latency) float64 { return l.P90 }},
		{"p99", "#d62728", func(l Latency) float64 { return l.P99 }},
	}
	pts := append(append([]Scenario{}, r.Curve...), Scenario{Throughput: r.Throughput, Latency: r.Latency})
	maxX, maxY := r.BaselineMQTT, 1.0
	for _, p := range pts {
		maxX = max(maxX, p.Throughput)
		maxY = max(maxY, p.Latency.P99)
	}
	maxX, maxY = niceCeil(maxX*1.05), niceCeil(maxY*1.1)
	px := func(x float64) float64 { return left + x/maxX*(width-left-right) }
	py := func(y float64) float64 { return height - bott - y/maxY*(height-top-bott) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14">edgebridge: request -&gt; reply latency vs throughput (%d devices, %d B, QoS 1, %s)</text>`+"\n",
		left, r.Setup.Devices, r.Setup.PayloadSize, html.EscapeString(r.Setup.Durability))
	for i := 0; i <= 5; i++ { // grid and ticks
		x, y := maxX*float64(i)/5, maxY*float64(i)/5
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>`+"\n", px(x), top, px(x), height-bott)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/>`+"\n", left, py(y), width-right, py(y))
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%.0f</text>`+"\n", px(x), height-bott+16, x)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%.1f</text>`+"\n", left-6, py(y)+4, y)
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, height-bott, width-right, height-bott)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, top, left, height-bott)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">throughput, msg/s</text>`+"\n", (left+width-right)/2, height-bott+38)
	fmt.Fprintf(&b, `<text x="16" y="%d" text-anchor="middle" transform="rotate(-90 16 %d)">latency, ms</text>`+"\n", (top+height-bott)/2, (top+height-bott)/2)
	if r.BaselineMQTT > 0 {
		x := px(r.BaselineMQTT)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#777" stroke-dasharray="4 3"/>`+"\n", x, top, x, height-bott)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="end" fill="#555">raw MQTT %.0f msg/s</text>`+"\n", x-4, top+12, r.BaselineMQTT)
	}
	for i, s := range series {
		var line []string
		for _, p := range pts {
			if p.Throughput <= 0 {
				continue
			}
			pt := point{px(p.Throughput), py(s.pick(p.Latency))}
			line = append(line, fmt.Sprintf("%.1f,%.1f", pt.x, pt.y))
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", pt.x, pt.y, s.color)
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", s.color, strings.Join(line, " "))
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="%s">%s</text>`+"\n", left+12, top+16+16*i, s.color, s.name)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#555">open-loop steps; last point: closed loop at full load</text>`+"\n", left+60, top+16)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// writeStages prints the site-rate scenarios' legs, from the bridge's
// histograms.
func writeStages(w io.Writer, rows []Scenario) error {
	found := false
	for _, sc := range rows {
		found = found || len(sc.Stages) > 0
	}
	if !found {
		return nil
	}
	fmt.Fprintln(w, "\nwhere the latency went at a site's rate (the bridge's histograms: the buckets holding p50 and p99, ms):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tleg\tcount\tp50 <=\tp99 <=\t")
	bound := func(ms float64) string {
		if ms < 0 {
			return "beyond"
		}
		return strconv.FormatFloat(ms, 'f', -1, 64)
	}
	for _, sc := range rows {
		for _, st := range sc.Stages {
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%s\t%s\t\n", sc.Name, st.Name, st.Count, bound(st.P50UpTo), bound(st.P99UpTo))
		}
	}
	return tw.Flush()
}
