package shim

import (
	"fmt"
	"math"
	"os"
	"sort"
	"strings"

	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The CRI plugin sends runc's Options only to runtime_type
// io.containerd.runc.v2. For any other runtime type, Keel's included, it
// sends a runtimeoptions.v1.Options whose body is the TOML of the
// runtime's `options` table (containerd 1.7 and later; 1.6 keeps only
// ConfigPath, a file of that TOML). Decoding that here is what lets the
// table `containerd config default` writes for runc work unchanged when
// only runtime_type is switched to io.containerd.keel.v2.
//
// Keys are the Options field names in any case, with or without
// underscores (BinaryName, binary_name). Besides runc's fields:
//
//	CriuPath = "/usr/sbin/criu"         # containerd 1.x writes it; runc's --criu
//	OutputBufferSize = 4194304          # bytes per stream held while nobody reads a FIFO
//	OutputBufferPolicy = "drop-oldest"  # or "block" (the default)
const (
	keyCriuPath           = "criupath"
	keyOutputBufferSize   = "outputbuffersize"
	keyOutputBufferPolicy = "outputbufferpolicy"
	maxOutputBufferSize   = 1 << 30
)

// optionsFromTOML decodes the CRI's TOML options into Keel's Options. An
// unknown key or a value of the wrong type is an InvalidArgument naming it.
func optionsFromTOML(ro *runtimeoptions.Options) (*Options, error) {
	body := ro.GetConfigBody()
	if p := ro.GetConfigPath(); p != "" {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("runtime options file: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		body = data
	}
	var table map[string]any
	if err := toml.Unmarshal(body, &table); err != nil {
		return nil, fmt.Errorf("runtime options: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	o := &Options{Runc: &options.Options{}}
	m := o.Runc.ProtoReflect()
	fields := m.Descriptor().Fields()
	byKey := make(map[string]protoreflect.FieldDescriptor, fields.Len())
	for i := 0; i < fields.Len(); i++ {
		byKey[normalizeKey(string(fields.Get(i).Name()))] = fields.Get(i)
	}
	// Sorted, so that of several bad keys the same one is reported.
	keys := make([]string, 0, len(table))
	for k := range table {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		value := table[key]
		var err error
		switch nk := normalizeKey(key); nk {
		case keyCriuPath:
			o.CriuPath, err = tomlString(value)
		case keyOutputBufferSize:
			var n uint64
			if n, err = tomlUint(value, maxOutputBufferSize); err == nil {
				o.Output.Size = int(n)
			}
		case keyOutputBufferPolicy:
			var policy string
			if policy, err = tomlString(value); err == nil && policy != "block" && policy != "drop-oldest" {
				err = fmt.Errorf(`want "block" or "drop-oldest"`)
			}
			o.Output.DropOldest = policy == "drop-oldest"
		default:
			fd, ok := byKey[nk]
			if !ok {
				return nil, fmt.Errorf("runtime options: unknown option %q: %w", key, errdefs.ErrInvalidArgument)
			}
			var v protoreflect.Value
			if v, err = protoValue(fd, value); err == nil {
				m.Set(fd, v)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("runtime options: %s = %v: %v: %w", key, value, err, errdefs.ErrInvalidArgument)
		}
	}
	if o.Output.DropOldest && o.Output.Size == 0 {
		return nil, fmt.Errorf("runtime options: OutputBufferPolicy = \"drop-oldest\" needs an OutputBufferSize: %w", errdefs.ErrInvalidArgument)
	}
	return o, nil
}

func normalizeKey(k string) string {
	return strings.ToLower(strings.ReplaceAll(k, "_", ""))
}

// protoValue converts one decoded TOML value for a field of runc's Options.
func protoValue(fd protoreflect.FieldDescriptor, v any) (protoreflect.Value, error) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		s, err := tomlString(v)
		return protoreflect.ValueOfString(s), err
	case protoreflect.BoolKind:
		b, ok := v.(bool)
		if !ok {
			return protoreflect.Value{}, fmt.Errorf("want true or false")
		}
		return protoreflect.ValueOfBool(b), nil
	case protoreflect.Uint32Kind:
		n, err := tomlUint(v, math.MaxUint32)
		return protoreflect.ValueOfUint32(uint32(n)), err
	}
	return protoreflect.Value{}, fmt.Errorf("unsupported option type %s", fd.Kind())
}

func tomlString(v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("want a string")
	}
	return s, nil
}

// tomlUint takes a TOML integer (go-toml decodes them as int64) in [0, max].
func tomlUint(v any, max uint64) (uint64, error) {
	n, ok := v.(int64)
	if !ok || n < 0 || uint64(n) > max {
		return 0, fmt.Errorf("want a whole number from 0 to %d", max)
	}
	return uint64(n), nil
}
