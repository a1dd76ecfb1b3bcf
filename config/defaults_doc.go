package config

import (
	"bytes"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"gopkg.in/yaml.v3"
)

// derived are the settings whose default follows another setting or the
// environment. DefaultsYAML prints each as a comment saying so, never as
// a value that would pin it.
var derived = map[string]string{
	"kafka.heartbeat_interval":       "a fifth of kafka.session_timeout",
	"backend.targets":                `["127.0.0.1:7070"], or none when dapr.enabled`,
	"backend.heartbeat.min_interval": "1s, or heartbeat.interval if that is shorter",
	"backend.heartbeat.max_interval": "2 x heartbeat.interval, at most 2/3 of heartbeat.timeout",
	"backend.heartbeat.timeout":      "3 x heartbeat.interval",
	"dapr.socket_folder":             "$" + DaprSocketFolderEnv + ", else " + DefaultDaprSocketFolder,
	"dapr.binding_topics":            `["device/+/command"] and the topics of mqtt.reply_topic`,
}

// DefaultsYAML is every setting with its default and its meaning (the doc
// comments of this package's types), as YAML that is itself a valid
// config equal to Default(): `edgebridge config defaults`.
func DefaultsYAML() []byte {
	var b bytes.Buffer
	b.WriteString("# Every edgebridge setting with its default (edgebridge config defaults).\n")
	b.WriteString("# A missing or zero value takes the default; a default that follows another\n")
	b.WriteString("# setting or the environment is a comment. Values may be ${VAR} or ${VAR:-default}.\n")
	writeStruct(&b, reflect.ValueOf(Default()), "", "")
	return b.Bytes()
}

// DefaultsMarkdown is docs/CONFIGURATION.md: DefaultsYAML in a page.
func DefaultsMarkdown() []byte {
	var b bytes.Buffer
	b.WriteString("# Configuration\n\n")
	b.WriteString("Generated from the code by `edgebridge config defaults -markdown` (`scripts/genconfig.sh`;\n")
	b.WriteString("CI fails when it is stale). The YAML below is itself a valid config, equal to the\n")
	b.WriteString("defaults. Unknown keys are errors; `edgebridge validate -config FILE` lists every\n")
	b.WriteString("problem with its line.\n\n```yaml\n")
	b.Write(DefaultsYAML())
	b.WriteString("```\n")
	return b.Bytes()
}

// writeStruct writes the fields of struct v, each with its doc comment,
// indented, their keys under path.
func writeStruct(b *bytes.Buffer, v reflect.Value, indent, path string) {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if key == "" || key == "-" {
			continue
		}
		full := strings.TrimPrefix(path+"."+key, ".")
		fv := v.Field(i)
		doc := fieldDoc[t.Name()+"."+f.Name]
		if fv.Kind() == reflect.Struct && f.Type != reflect.TypeFor[time.Duration]() {
			if doc == "" {
				doc = fieldDoc[f.Type.Name()]
			}
			if path == "" {
				b.WriteString("\n")
			}
			writeComment(b, indent, f.Name, key, renamed(t, doc))
			fmt.Fprintf(b, "%s%s:\n", indent, key)
			writeStruct(b, fv, indent+"  ", full)
			continue
		}
		writeComment(b, indent, f.Name, key, renamed(t, doc))
		if why, ok := derived[full]; ok {
			fmt.Fprintf(b, "%s# %s: (default: %s)\n", indent, key, why)
			continue
		}
		fmt.Fprintf(b, "%s%s: %s\n", indent, key, yamlValue(fv))
	}
}

// renamed is doc with the compound Go names of t's fields (CertFile, not
// TLS) in their YAML spelling.
func renamed(t reflect.Type, doc string) string {
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if key == "" || strings.ToUpper(f.Name) == f.Name || strings.IndexFunc(f.Name[1:], unicode.IsUpper) < 0 {
			continue
		}
		doc = wholeWord(f.Name).ReplaceAllString(doc, key)
	}
	return doc
}

func wholeWord(w string) *regexp.Regexp { return regexp.MustCompile(`\b` + regexp.QuoteMeta(w) + `\b`) }

// writeComment writes doc as comment lines, its leading Go field name
// replaced by the YAML key.
func writeComment(b *bytes.Buffer, indent, goName, key, doc string) {
	if doc == "" {
		return
	}
	if rest, ok := strings.CutPrefix(doc, goName); ok && (rest == "" || rest[0] == ' ' || rest[0] == ':' || rest[0] == ',') {
		doc = key + rest
	}
	for _, line := range strings.Split(doc, "\n") {
		fmt.Fprintf(b, "%s# %s\n", indent, line)
	}
}

// yamlValue is v as a YAML flow value.
func yamlValue(v reflect.Value) string {
	switch {
	case v.Type() == reflect.TypeFor[time.Duration]():
		return shortDuration(time.Duration(v.Int()))
	case v.Kind() == reflect.Slice:
		items := make([]string, v.Len())
		for i := range v.Len() {
			items[i] = yamlValue(v.Index(i))
		}
		return "[" + strings.Join(items, ", ") + "]"
	case v.Kind() == reflect.Float64:
		return strconv.FormatFloat(v.Float(), 'g', -1, 64)
	}
	raw, err := yaml.Marshal(v.Interface())
	if err != nil {
		panic(err) // plain scalars always marshal
	}
	s := strings.TrimSpace(string(raw))
	if v.Kind() == reflect.String && strings.ContainsAny(s, "{}[],") && !strings.HasPrefix(s, `"`) {
		s = strconv.Quote(v.String()) // a flow value must not hold flow indicators unquoted
	}
	return s
}

// shortDuration is d without zero units: 720h, 1m, 6s, 200ms.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
