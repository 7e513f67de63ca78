package shim

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/keel-shim/keel/process"
)

// The CRI plugin sends runc's Options only to runtime_type
// io.containerd.runc.v2. For any other runtime type, Keel's included, it
// sends a runtimeoptions.v1.Options whose body is the TOML of the
// runtime's `options` table (or a path to such a file). Decoding that
// here is what lets an existing options block work unchanged when only
// runtime_type is switched to io.containerd.keel.v2.

// The same table carries Keel's own options, which runc's Options have no
// field for:
//
//	OutputBufferSize = 4194304      # bytes per stream held while nobody reads a FIFO
//	OutputBufferPolicy = "drop-oldest"  # or "block" (the default)
const (
	keyOutputBufferSize   = "outputbuffersize"
	keyOutputBufferPolicy = "outputbufferpolicy"
	maxOutputBufferSize   = 1 << 30
)

// runcOptionsFromTOML decodes the flat TOML table containerd marshals
// (`BinaryName = "crun"`, `SystemdCgroup = true`, `IoUid = 1000`) into
// runc's Options and Keel's output buffer. Keys match field names in any
// case, with or without underscores; an unknown key or a value of the
// wrong type is an error.
func runcOptionsFromTOML(ro *runtimeoptions.Options) (*options.Options, process.OutputBuffer, error) {
	var out process.OutputBuffer
	body := ro.GetConfigBody()
	if p := ro.GetConfigPath(); p != "" {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, out, fmt.Errorf("runtime options file: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		body = data
	}
	opts := &options.Options{}
	m := opts.ProtoReflect()
	fields := m.Descriptor().Fields()
	byKey := make(map[string]protoreflect.FieldDescriptor, fields.Len())
	for i := 0; i < fields.Len(); i++ {
		byKey[normalizeKey(string(fields.Get(i).Name()))] = fields.Get(i)
	}
	for n, line := range strings.Split(string(body), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, raw, ok := strings.Cut(line, "=")
		if !ok {
			return nil, out, fmt.Errorf("runtime options line %d %q: want key = value: %w", n+1, line, errdefs.ErrInvalidArgument)
		}
		key, raw = strings.Trim(strings.TrimSpace(key), `"`), strings.TrimSpace(raw)
		var err error
		switch nk := normalizeKey(key); nk {
		case keyOutputBufferSize:
			out.Size, err = strconv.Atoi(raw)
			if err != nil || out.Size < 0 || out.Size > maxOutputBufferSize {
				err = fmt.Errorf("want a number of bytes up to %d", maxOutputBufferSize)
			}
		case keyOutputBufferPolicy:
			var policy string
			if policy, err = strconv.Unquote(raw); err == nil && policy != "block" && policy != "drop-oldest" {
				err = fmt.Errorf(`want "block" or "drop-oldest"`)
			}
			out.DropOldest = policy == "drop-oldest"
		default:
			fd, ok := byKey[nk]
			if !ok {
				return nil, out, fmt.Errorf("runtime options: unknown option %q: %w", key, errdefs.ErrInvalidArgument)
			}
			var v protoreflect.Value
			if v, err = tomlValue(fd, raw); err == nil {
				m.Set(fd, v)
			}
		}
		if err != nil {
			return nil, out, fmt.Errorf("runtime options: %s = %s: %v: %w", key, raw, err, errdefs.ErrInvalidArgument)
		}
	}
	if out.DropOldest && out.Size == 0 {
		return nil, out, fmt.Errorf("runtime options: OutputBufferPolicy = \"drop-oldest\" needs an OutputBufferSize: %w", errdefs.ErrInvalidArgument)
	}
	return opts, out, nil
}

func normalizeKey(k string) string {
	return strings.ToLower(strings.ReplaceAll(k, "_", ""))
}

// tomlValue parses one TOML scalar for a field of runc's Options.
func tomlValue(fd protoreflect.FieldDescriptor, raw string) (protoreflect.Value, error) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		s, err := strconv.Unquote(raw)
		if err != nil && strings.HasPrefix(raw, "'") && strings.HasSuffix(raw, "'") && len(raw) >= 2 {
			s, err = raw[1:len(raw)-1], nil // a TOML literal string
		}
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("want a string")
		}
		return protoreflect.ValueOfString(s), nil
	case protoreflect.BoolKind:
		b, err := strconv.ParseBool(raw)
		if err != nil || (raw != "true" && raw != "false") {
			return protoreflect.Value{}, fmt.Errorf("want true or false")
		}
		return protoreflect.ValueOfBool(b), nil
	case protoreflect.Uint32Kind:
		u, err := strconv.ParseUint(raw, 10, 32)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("want a number")
		}
		return protoreflect.ValueOfUint32(uint32(u)), nil
	}
	return protoreflect.Value{}, fmt.Errorf("unsupported option type %s", fd.Kind())
}
