// Package deployments checks, offline, the container and Kubernetes files
// in this folder against the code they deploy: every YAML file parses, the
// kustomize overlays render (with kustomize's own Go API), and images,
// commands, ports, probe paths, environment, stream and consumer-group
// names match the code's constants and flag defaults. No Docker engine or
// cluster is needed. It is its own Go module so that kustomize's
// dependencies stay out of fnmesh's go.mod.
package deployments

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v3"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/security"
)

// binaries maps each binary the Dockerfile builds (by its path in the
// image) to the fnmesh service it runs ("" for the CLI).
var binaries = map[string]string{
	"/usr/local/bin/fnmesh": "",
	"/usr/local/bin/math":   examples.Math(handlers.Config{AllowUnauthenticated: true}).Name(),
	"/usr/local/bin/mail":   examples.MailService(handlers.Config{AllowUnauthenticated: true}, nil).Name(),
}

// scaleToZero lists the services whose ScaledObject may go to zero
// replicas: their functions are sent (fire-and-forget), so a request
// waits in its stream for a replica to start. Called functions must not:
// their callers' deadlines would pass during a cold start.
var scaleToZero = map[string]bool{"mail": true}

// The gateway (fnmesh gateway) listens on :8080 by default and answers
// /healthz there (TestCLICommandsExist checks the default).
const gatewayPort = 8080

// decodeAll reads every YAML document of a file into generic values.
func decodeAll(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var docs []map[string]any
	dec := yaml.NewDecoder(f)
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

// into converts a generic value into a typed one through JSON.
func into(t *testing.T, v any, out any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
}

func yamlFiles(t *testing.T) []string {
	var files []string
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestEveryYAMLFileParses(t *testing.T) {
	files := yamlFiles(t)
	if len(files) < 8 {
		t.Fatalf("found %d YAML files: %v", len(files), files)
	}
	for _, f := range files {
		docs := decodeAll(t, f)
		if len(docs) == 0 {
			t.Errorf("%s: no documents", f)
		}
		if f == "docker-compose.yml" {
			continue
		}
		for i, d := range docs {
			var o object
			into(t, d, &o)
			if o.APIVersion == "" || o.Kind == "" || (o.Metadata.Name == "" && o.Kind != "Kustomization") {
				t.Errorf("%s document %d: apiVersion %q kind %q name %q", f, i, o.APIVersion, o.Kind, o.Metadata.Name)
			}
		}
		t.Logf("%s: %d documents", f, len(docs))
	}
}

// --- Dockerfile ---

type dockerfile struct {
	goVersion string          // of the build stage's golang image
	built     map[string]bool // image paths of the binaries
	exposed   []int
	user      string // of the final stage
}

func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := dockerfile{built: map[string]bool{}}
	var lines []string
	sc := bufio.NewScanner(f)
	cont := ""
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "#") || l == "" {
			continue
		}
		if strings.HasSuffix(l, "\\") {
			cont += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		lines = append(lines, cont+l)
		cont = ""
	}
	var buildTargets []string
	for _, l := range lines {
		f := strings.Fields(l)
		switch strings.ToUpper(f[0]) {
		case "FROM":
			if m := regexp.MustCompile(`^golang:(\d+\.\d+)`).FindStringSubmatch(f[1]); m != nil {
				d.goVersion = m[1]
			}
			d.user = "" // a new stage
		case "USER":
			d.user = f[1]
		case "EXPOSE":
			for _, p := range f[1:] {
				n, _ := strconv.Atoi(p)
				d.exposed = append(d.exposed, n)
			}
		case "COPY":
			if !strings.HasPrefix(f[1], "--from") {
				for _, src := range f[1 : len(f)-1] {
					if _, err := os.Stat(filepath.Join("..", src)); err != nil {
						t.Errorf("Dockerfile copies %s from the repository root: %v", src, err)
					}
				}
			} else {
				dst := f[len(f)-1]
				for _, src := range f[2 : len(f)-1] {
					d.built[filepath.Join(dst, filepath.Base(src))] = true
				}
			}
		case "RUN":
			if i := strings.Index(l, "go build"); i >= 0 {
				for _, w := range strings.Fields(l[i:]) {
					if strings.HasPrefix(w, "./") {
						buildTargets = append(buildTargets, w)
					}
				}
			}
		}
	}
	if len(buildTargets) == 0 {
		t.Fatal("Dockerfile runs no go build")
	}
	for _, target := range buildTargets {
		src, err := os.ReadFile(filepath.Join("..", target, "main.go"))
		if err != nil || !strings.Contains(string(src), "package main") {
			t.Errorf("Dockerfile builds %s: no main package there (%v)", target, err)
		}
		if !d.built[filepath.Join("/usr/local/bin", filepath.Base(target))] {
			t.Errorf("Dockerfile builds %s but does not copy it to /usr/local/bin", target)
		}
	}
	return d
}

func TestDockerfile(t *testing.T) {
	d := readDockerfile(t)
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(mod)
	if m == nil || d.goVersion != string(m[1]) {
		t.Errorf("Dockerfile builds with golang:%s, go.mod says go %s", d.goVersion, m[1])
	}
	for bin := range binaries {
		if !d.built[bin] {
			t.Errorf("Dockerfile does not put %s in the image", bin)
		}
	}
	if uid, _, _ := strings.Cut(d.user, ":"); uid == "" || uid == "0" || uid == "root" {
		t.Errorf("final stage runs as user %q, want a non-root one", d.user)
	}
	for _, p := range []int{gatewayPort, opsPort(t, examples.DefaultOpsAddr)} {
		if !slices.Contains(d.exposed, p) {
			t.Errorf("Dockerfile does not EXPOSE %d", p)
		}
	}
	if _, err := os.Stat("Dockerfile.dockerignore"); err != nil {
		t.Errorf("no Dockerfile.dockerignore: %v", err)
	}
}

func opsPort(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	if err != nil || n == 0 {
		t.Fatalf("ops address %q: %v", addr, err)
	}
	return n
}

// flagEnv returns the environment variables of an example binary's flag.
func flagEnv(t *testing.T, name string) []string {
	t.Helper()
	app := examples.ServiceApp("x", "", nil)
	for _, f := range app.Flags {
		if slices.Contains(f.Names(), name) {
			if ev, ok := f.(interface{ GetEnvVars() []string }); ok {
				return ev.GetEnvVars()
			}
		}
	}
	t.Fatalf("example binaries have no --%s flag", name)
	return nil
}

// hasFlag reports whether the example binaries take --name.
func hasFlag(name string) bool {
	for _, f := range examples.ServiceApp("x", "", nil).Flags {
		if slices.Contains(f.Names(), name) {
			return true
		}
	}
	return false
}

// argValue returns the value of --name in args (--name=v or --name v).
func argValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// checkServiceArgs checks an example binary's arguments: every flag
// exists, and returns --drain and the ops port.
func checkServiceArgs(t *testing.T, where string, args []string) (drain time.Duration, ops int) {
	t.Helper()
	for _, a := range args {
		if name, ok := strings.CutPrefix(a, "--"); ok {
			name, _, _ = strings.Cut(name, "=")
			if !hasFlag(name) {
				t.Errorf("%s: the example binaries have no flag --%s", where, name)
			}
		}
	}
	d, ok := argValue(args, "drain")
	if !ok {
		t.Errorf("%s: no --drain: the grace period must be set against it", where)
	}
	drain, err := time.ParseDuration(d)
	if ok && (err != nil || drain <= 0) {
		t.Errorf("%s: --drain %q: %v", where, d, err)
	}
	addr := examples.DefaultOpsAddr
	if v, ok := argValue(args, "ops-addr"); ok {
		addr = v
	}
	if c, ok := argValue(args, "concurrency"); ok && c != strconv.Itoa(examples.DefaultConcurrency) {
		t.Logf("%s: concurrency %s (default %d): check the pending trigger", where, c, examples.DefaultConcurrency)
	}
	return drain, opsPort(t, addr)
}

// --- docker-compose.yml ---

type composeFile struct {
	Services map[string]struct {
		Image           string
		Build           *struct{ Context, Dockerfile string }
		Entrypoint      []string
		Command         []string
		Environment     map[string]string
		Ports           []string
		Volumes         []string
		Deploy          *struct{ Replicas int }
		StopGracePeriod string `json:"stop_grace_period"`
	}
}

func TestCompose(t *testing.T) {
	d := readDockerfile(t)
	docs := decodeAll(t, "docker-compose.yml")
	var c composeFile
	into(t, docs[0], &c)
	redis, ok := c.Services["redis"]
	if !ok {
		t.Fatal("no redis service")
	}
	if v, _ := argValue(redis.Command, "appendonly"); !slices.Contains(redis.Command, "--appendonly") || v != "yes" {
		t.Errorf("redis runs %v, want --appendonly yes", redis.Command)
	}
	if len(redis.Volumes) == 0 || !strings.HasSuffix(redis.Volumes[0], ":/data") {
		t.Errorf("redis keeps no volume on /data: %v", redis.Volumes)
	}
	perService := map[string]int{}
	for name, s := range c.Services {
		if name == "redis" {
			continue
		}
		if s.Build == nil || filepath.Join(s.Build.Context, s.Build.Dockerfile) != filepath.Join("..", "deployments", "Dockerfile") {
			t.Errorf("%s: build %+v, want context .. and deployments/Dockerfile", name, s.Build)
		}
		if len(s.Entrypoint) == 0 || !d.built[s.Entrypoint[0]] {
			t.Errorf("%s: entrypoint %v is not a binary the Dockerfile builds", name, s.Entrypoint)
			continue
		}
		u, err := bus.ParseRedisURL(s.Environment[flagEnv(t, "redis")[0]])
		if err != nil || u.Topology != bus.Single || u.Single.Addr != "redis:6379" {
			t.Errorf("%s: REDIS_URL %q (%v), want the redis service on 6379", name, s.Environment["REDIS_URL"], err)
		}
		secret := s.Environment[examples.SecretEnv]
		if len(secret) < 32 {
			t.Errorf("%s: %s is %d bytes, want at least 32", name, examples.SecretEnv, len(secret))
		}
		if tok := s.Environment["FNMESH_TOKEN"]; tok != "" {
			v, err := security.NewJWTVerifier(security.JWTConfig{HMACSecret: []byte(secret)})
			if err != nil {
				t.Fatal(err)
			}
			claims, err := v.Verify(t.Context(), tok)
			if err != nil {
				t.Errorf("%s: FNMESH_TOKEN does not verify with the services' secret: %v", name, err)
			} else if exp, _ := claims["exp"].(float64); time.Unix(int64(exp), 0).Before(time.Now().AddDate(1, 0, 0)) {
				t.Errorf("%s: FNMESH_TOKEN expires at %v: mint a new one (fnmesh token --ttl 87600h)", name, time.Unix(int64(exp), 0))
			}
		}
		svc := binaries[s.Entrypoint[0]]
		if svc == "" {
			if slices.Contains(s.Command, "gateway") {
				if v, _ := argValue(s.Command, "listen"); v != ":"+strconv.Itoa(gatewayPort) {
					t.Errorf("gateway listens on %q, want :%d", v, gatewayPort)
				}
				if !slices.Contains(s.Ports, fmt.Sprintf("%d:%d", gatewayPort, gatewayPort)) {
					t.Errorf("gateway publishes %v, want %d", s.Ports, gatewayPort)
				}
			}
			continue
		}
		replicas := 1
		if s.Deploy != nil && s.Deploy.Replicas > 0 {
			replicas = s.Deploy.Replicas
		}
		perService[svc] += replicas
		drain, _ := checkServiceArgs(t, name, s.Command)
		grace, err := time.ParseDuration(s.StopGracePeriod)
		if err != nil || grace <= drain {
			t.Errorf("%s: stop_grace_period %q, want longer than --drain %v", name, s.StopGracePeriod, drain)
		}
	}
	if perService["math"] != 3 || perService["mail"] < 1 {
		t.Errorf("replicas per service %v, want math 3 and mail at least 1", perService)
	}
}

// --- Kubernetes ---

type object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string
	Metadata   struct {
		Name, Namespace string
		Labels          map[string]string
	}
	Spec json.RawMessage
	Data map[string]string
}

type workload struct {
	Selector struct{ MatchLabels map[string]string }
	Template struct {
		Metadata struct{ Labels map[string]string }
		Spec     podSpec
	}
}

type podSpec struct {
	TerminationGracePeriodSeconds *int64
	SecurityContext               struct{ RunAsNonRoot *bool }
	Containers                    []container
}

type envVar struct {
	Name, Value string
	ValueFrom   *struct {
		ConfigMapKeyRef *struct{ Name, Key string }
		SecretKeyRef    *struct{ Name, Key string }
	}
}

type container struct {
	Name, Image   string
	Command, Args []string
	Ports         []struct {
		Name          string
		ContainerPort int
	}
	Env                           []envVar
	ReadinessProbe, LivenessProbe *probe
	Resources                     struct{ Requests map[string]string }
}

type probe struct {
	HTTPGet *struct {
		Path string
		Port any
	} `json:"httpGet"`
}

type scaledObject struct {
	ScaleTargetRef  struct{ Name string }
	MinReplicaCount *int
	MaxReplicaCount *int
	Triggers        []struct {
		Type     string
		Metadata map[string]string
	}
}

type rendered struct {
	namespace string
	objs      []object
}

func (r rendered) find(kind, name string) (object, bool) {
	for _, o := range r.objs {
		if o.Kind == kind && o.Metadata.Name == name {
			return o, true
		}
	}
	return object{}, false
}

func (r rendered) all(kind string) []object {
	var out []object
	for _, o := range r.objs {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

// configValue resolves an env var of c to its value in a rendered
// ConfigMap or Secret ("" if not found).
func (r rendered) configValue(c container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name != name {
			continue
		}
		if e.ValueFrom == nil {
			return e.Value, true
		}
		if ref := e.ValueFrom.ConfigMapKeyRef; ref != nil {
			if cm, ok := r.find("ConfigMap", ref.Name); ok {
				v, ok := cm.Data[ref.Key]
				return v, ok
			}
		}
		return "", false
	}
	return "", false
}

func render(t *testing.T, dir string) rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var r rendered
	for _, res := range rm.Resources() {
		b, err := res.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var o object
		if err := json.Unmarshal(b, &o); err != nil {
			t.Fatal(err)
		}
		r.objs = append(r.objs, o)
	}
	return r
}

func matches(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// portOf resolves a probe's or Service's port (a number or a name) in c.
func portOf(c container, p any) int {
	switch v := p.(type) {
	case float64:
		return int(v)
	case string:
		for _, cp := range c.Ports {
			if cp.Name == v {
				return cp.ContainerPort
			}
		}
	}
	return 0
}

func TestKustomizeBuildsEveryDirectory(t *testing.T) {
	for _, dir := range []string{"k8s/base", "k8s/redis-dev", "k8s/overlays/dev", "k8s/overlays/production"} {
		r := render(t, dir)
		t.Logf("kustomize build %s: %d objects", dir, len(r.objs))
	}
}

func TestOverlays(t *testing.T) {
	for _, tc := range []struct {
		dir, namespace, image string
		topology              bus.Topology
		trigger, addressKey   string
	}{
		{"k8s/overlays/dev", "fnmesh-dev", "fnmesh:dev", bus.Single, "redis-streams", "addressFromEnv"},
		{"k8s/overlays/production", "fnmesh", "ghcr.io/fnmesh/fnmesh:0.1.0", bus.Cluster, "redis-cluster-streams", "addressesFromEnv"},
	} {
		t.Run(filepath.Base(tc.dir), func(t *testing.T) {
			checkOverlay(t, render(t, tc.dir), tc.namespace, tc.image, tc.topology, tc.trigger, tc.addressKey)
		})
	}
}

func checkOverlay(t *testing.T, r rendered, namespace, image string, topo bus.Topology, trigger, addressKey string) {
	d := readDockerfile(t)
	for _, o := range r.objs {
		if o.Kind != "Namespace" && o.Metadata.Namespace != namespace {
			t.Errorf("%s %s in namespace %q, want %s", o.Kind, o.Metadata.Name, o.Metadata.Namespace, namespace)
		}
	}
	pdbs := r.all("PodDisruptionBudget")
	services := map[string]bool{}
	for _, o := range append(r.all("Deployment"), r.all("StatefulSet")...) {
		var w workload
		into(t, o.Spec, &w)
		where := o.Kind + " " + o.Metadata.Name
		if !matches(w.Selector.MatchLabels, w.Template.Metadata.Labels) {
			t.Errorf("%s: selector %v does not select its pods %v", where, w.Selector.MatchLabels, w.Template.Metadata.Labels)
		}
		if nr := w.Template.Spec.SecurityContext.RunAsNonRoot; nr == nil || !*nr {
			t.Errorf("%s: runAsNonRoot not set", where)
		}
		for _, c := range w.Template.Spec.Containers {
			if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" {
				t.Errorf("%s: container %s requests %v, want cpu and memory", where, c.Name, c.Resources.Requests)
			}
		}
		if o.Kind == "StatefulSet" {
			continue
		}
		hasPDB := false
		for _, p := range pdbs {
			var spec struct {
				Selector struct{ MatchLabels map[string]string }
			}
			into(t, p.Spec, &spec)
			hasPDB = hasPDB || matches(spec.Selector.MatchLabels, w.Template.Metadata.Labels)
		}
		if !hasPDB {
			t.Errorf("%s: no PodDisruptionBudget selects its pods", where)
		}
		if len(w.Template.Spec.Containers) != 1 {
			t.Fatalf("%s: %d containers", where, len(w.Template.Spec.Containers))
		}
		c := w.Template.Spec.Containers[0]
		if c.Image != image {
			t.Errorf("%s: image %q, want %q", where, c.Image, image)
		}
		if len(c.Command) == 0 || !d.built[c.Command[0]] {
			t.Errorf("%s: command %v is not a binary the image holds", where, c.Command)
			continue
		}
		// Every fnmesh component reads Redis from REDIS_URL.
		redisEnv := flagEnv(t, "redis")[0]
		rawURL, ok := r.configValue(c, redisEnv)
		if !ok {
			t.Errorf("%s: no %s from a ConfigMap", where, redisEnv)
			continue
		}
		u, err := bus.ParseRedisURL(rawURL)
		if err != nil || u.Topology != topo {
			t.Errorf("%s: %s=%q: %v, want a %s URL", where, redisEnv, rawURL, err, topo)
			continue
		}
		secretEnv := false
		for _, e := range c.Env {
			if e.Name == examples.SecretEnv && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				secretEnv = true
			}
		}
		if !secretEnv {
			t.Errorf("%s: %s does not come from a Secret", where, examples.SecretEnv)
		}
		service := binaries[c.Command[0]]
		if service == "" {
			checkGateway(t, r, where, w, c)
			continue
		}
		services[service] = true
		drain, ops := checkServiceArgs(t, where, c.Args)
		if p := portOf(c, "ops"); p != ops {
			t.Errorf("%s: container port \"ops\" is %d, the binary serves /healthz on %d", where, p, ops)
		}
		for name, pr := range map[string]*probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
			if pr == nil || pr.HTTPGet == nil {
				t.Errorf("%s: no HTTP %s probe", where, name)
				continue
			}
			if pr.HTTPGet.Path != handlers.HealthPath || portOf(c, pr.HTTPGet.Port) != ops {
				t.Errorf("%s: %s probe on %s port %v, want %s on %d", where, name, pr.HTTPGet.Path, pr.HTTPGet.Port, handlers.HealthPath, ops)
			}
		}
		grace := time.Duration(-1)
		if g := w.Template.Spec.TerminationGracePeriodSeconds; g != nil {
			grace = time.Duration(*g) * time.Second
		}
		if grace < drain+10*time.Second {
			t.Errorf("%s: terminationGracePeriodSeconds %v, want at least --drain (%v) + 10s", where, grace, drain)
		}
		checkScaledObject(t, r, o.Metadata.Name, service, c, u, trigger, addressKey)
	}
	for _, want := range []string{"math", "mail"} {
		if !services[want] {
			t.Errorf("no Deployment runs the %s service", want)
		}
	}
	if _, ok := r.find("Deployment", "gateway"); !ok {
		t.Error("no gateway Deployment")
	}
	if topo == bus.Single {
		checkDevRedis(t, r, namespace)
	}
	for _, s := range r.all("Secret") {
		if strings.Contains(string(s.Spec)+fmt.Sprint(s.Data), examples.DemoSecret) && namespace != "fnmesh-dev" {
			t.Errorf("%s carries the demo secret", s.Metadata.Name)
		}
	}
}

func checkScaledObject(t *testing.T, r rendered, deployment, service string, c container, u *bus.RedisURL, trigger, addressKey string) {
	t.Helper()
	var so *scaledObject
	for _, o := range r.all("ScaledObject") {
		var s scaledObject
		into(t, o.Spec, &s)
		if s.ScaleTargetRef.Name == deployment {
			so = &s
		}
	}
	if so == nil {
		t.Errorf("no KEDA ScaledObject scales %s", deployment)
		return
	}
	where := "ScaledObject of " + deployment
	conc := examples.DefaultConcurrency
	if v, ok := argValue(c.Args, "concurrency"); ok {
		conc, _ = strconv.Atoi(v)
	}
	hasLag := false
	for i, tr := range so.Triggers {
		md := tr.Metadata
		if tr.Type != trigger {
			t.Errorf("%s trigger %d: type %s, want %s", where, i, tr.Type, trigger)
		}
		if md["stream"] != bus.RequestTopic(service) || md["consumerGroup"] != bus.Group {
			t.Errorf("%s trigger %d: stream %q group %q, want %q and %q", where, i, md["stream"], md["consumerGroup"], bus.RequestTopic(service), bus.Group)
		}
		if _, ok := md["lagCount"]; ok {
			hasLag = true
			if _, ok := md["activationLagCount"]; !ok {
				t.Errorf("%s: lagCount without activationLagCount", where)
			}
		}
		if p, ok := md["pendingEntriesCount"]; ok {
			if n, _ := strconv.Atoi(p); n < 1 || n > conc {
				t.Errorf("%s: pendingEntriesCount %s, want 1 to the replica's concurrency %d", where, p, conc)
			}
		}
		// KEDA reads the address from the scaled container's environment.
		env := md[addressKey]
		addr, ok := r.configValue(c, env)
		if env == "" || !ok {
			t.Errorf("%s trigger %d: %s=%q is not in the container's environment", where, i, addressKey, env)
			continue
		}
		checkKEDAAddress(t, where, addr, u, r.namespaceOf(deployment))
	}
	if !hasLag {
		t.Errorf("%s: no lagCount trigger", where)
	}
	if so.MinReplicaCount == nil || so.MaxReplicaCount == nil {
		t.Errorf("%s: minReplicaCount and maxReplicaCount must be set", where)
		return
	}
	if *so.MinReplicaCount == 0 && !scaleToZero[service] {
		t.Errorf("%s: minReplicaCount 0: %s is called, not sent, and must keep a replica", where, service)
	}
	if *so.MaxReplicaCount < max(1, *so.MinReplicaCount) {
		t.Errorf("%s: maxReplicaCount %d below minReplicaCount %d", where, *so.MaxReplicaCount, *so.MinReplicaCount)
	}
}

func (r rendered) namespaceOf(deployment string) string {
	o, _ := r.find("Deployment", deployment)
	return o.Metadata.Namespace
}

// checkKEDAAddress checks that the address KEDA's operator dials is the
// Redis the services use: the same hosts and ports, with a short Service
// name spelled out in full (KEDA runs in its own namespace).
func checkKEDAAddress(t *testing.T, where, addr string, u *bus.RedisURL, namespace string) {
	t.Helper()
	var want []string
	switch u.Topology {
	case bus.Single:
		want = []string{u.Single.Addr}
	case bus.Cluster:
		want = u.Cluster.Addrs
	default:
		t.Errorf("%s: topology %s", where, u.Topology)
		return
	}
	got := strings.Split(addr, ",")
	if len(got) != len(want) {
		t.Errorf("%s: KEDA dials %v, the services %v", where, got, want)
		return
	}
	for i := range got {
		gh, gp, _ := net.SplitHostPort(got[i])
		wh, wp, _ := net.SplitHostPort(want[i])
		if !strings.Contains(wh, ".") {
			wh += "." + namespace + ".svc.cluster.local"
		}
		if gh != wh || gp != wp {
			t.Errorf("%s: KEDA dials %s, the services %s (as %s:%s from KEDA's namespace)", where, got[i], want[i], wh, wp)
		}
	}
}

func checkGateway(t *testing.T, r rendered, where string, w workload, c container) {
	t.Helper()
	if !slices.Contains(c.Args, "gateway") {
		t.Errorf("%s: runs fnmesh %v, want fnmesh gateway", where, c.Args)
		return
	}
	if v, _ := argValue(c.Args, "listen"); v != ":"+strconv.Itoa(gatewayPort) {
		t.Errorf("%s: --listen %q, want :%d", where, v, gatewayPort)
	}
	if p := portOf(c, "http"); p != gatewayPort {
		t.Errorf("%s: container port http is %d, want %d", where, p, gatewayPort)
	}
	for name, pr := range map[string]*probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Path != "/healthz" || portOf(c, pr.HTTPGet.Port) != gatewayPort {
			t.Errorf("%s: %s probe %+v, want /healthz on %d", where, name, pr, gatewayPort)
		}
	}
	svc, ok := r.find("Service", "gateway")
	if !ok {
		t.Fatalf("no gateway Service")
	}
	var ss struct {
		Selector map[string]string
		Ports    []struct {
			Name       string
			Port       int
			TargetPort any
		}
	}
	into(t, svc.Spec, &ss)
	if !matches(ss.Selector, w.Template.Metadata.Labels) || len(ss.Ports) == 0 || portOf(c, ss.Ports[0].TargetPort) != gatewayPort {
		t.Errorf("gateway Service %+v does not reach the gateway's port %d", ss, gatewayPort)
	}
	ing, ok := r.find("Ingress", "gateway")
	if !ok {
		t.Fatalf("no gateway Ingress")
	}
	var is struct {
		Rules []struct {
			HTTP struct {
				Paths []struct {
					Backend struct {
						Service struct {
							Name string
							Port struct{ Name string }
						}
					}
				}
			}
		}
	}
	into(t, ing.Spec, &is)
	if len(is.Rules) == 0 || len(is.Rules[0].HTTP.Paths) == 0 {
		t.Fatalf("gateway Ingress has no paths")
	}
	b := is.Rules[0].HTTP.Paths[0].Backend.Service
	if b.Name != svc.Metadata.Name || len(ss.Ports) == 0 || b.Port.Name != ss.Ports[0].Name {
		t.Errorf("Ingress backend %+v, want Service %s port %s", b, svc.Metadata.Name, ss.Ports[0].Name)
	}
}

func checkDevRedis(t *testing.T, r rendered, namespace string) {
	t.Helper()
	sts, ok := r.find("StatefulSet", "redis")
	if !ok {
		t.Fatal("no Redis StatefulSet in the dev overlay")
	}
	var w workload
	into(t, sts.Spec, &w)
	c := w.Template.Spec.Containers[0]
	if v, _ := argValue(c.Command, "appendonly"); v != "yes" {
		t.Errorf("Redis runs %v, want --appendonly yes", c.Command)
	}
	svc, ok := r.find("Service", "redis")
	if !ok {
		t.Fatal("no redis Service")
	}
	var ss struct {
		Selector map[string]string
		Ports    []struct{ Port int }
	}
	into(t, svc.Spec, &ss)
	if !matches(ss.Selector, w.Template.Metadata.Labels) || len(ss.Ports) == 0 {
		t.Fatalf("redis Service %+v does not select the StatefulSet's pods", ss)
	}
	for _, d := range r.all("Deployment") {
		var dw workload
		into(t, d.Spec, &dw)
		raw, _ := r.configValue(dw.Template.Spec.Containers[0], "REDIS_URL")
		u, err := bus.ParseRedisURL(raw)
		if err != nil {
			continue // reported by the caller
		}
		if want := fmt.Sprintf("%s:%d", svc.Metadata.Name, ss.Ports[0].Port); u.Single.Addr != want {
			t.Errorf("Deployment %s: REDIS_URL %s, want the redis Service at %s", d.Metadata.Name, raw, want)
		}
	}
}

// The dev overlay's secret is the demo's, so that tokens minted by
// `fnmesh token` work there; production's must come from elsewhere.
func TestSecrets(t *testing.T) {
	dev := render(t, "k8s/overlays/dev")
	found := false
	for _, s := range dev.all("Secret") {
		var raw map[string]string
		into(t, s.Data, &raw)
		if strings.HasPrefix(s.Metadata.Name, "fnmesh-jwt") {
			found = true
		}
	}
	if !found {
		t.Error("dev overlay generates no fnmesh-jwt Secret")
	}
	if n := len(render(t, "k8s/overlays/production").all("Secret")); n != 0 {
		t.Errorf("production overlay renders %d Secrets, want none (created outside git)", n)
	}
}

// docker-compose.yml is a valid Compose file by the Compose
// specification's own loader (schema, anchors and merge keys, paths),
// and what it resolves to is what TestCompose checked.
func TestComposeSpec(t *testing.T) {
	details := types.ConfigDetails{
		WorkingDir:  ".",
		ConfigFiles: []types.ConfigFile{{Filename: "docker-compose.yml"}},
		Environment: types.Mapping{},
	}
	p, err := loader.LoadWithContext(t.Context(), details)
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	math, err := p.GetService("math")
	if err != nil {
		t.Fatal(err)
	}
	if math.Deploy == nil || math.Deploy.Replicas == nil || *math.Deploy.Replicas != 3 {
		t.Errorf("math deploy %+v, want 3 replicas", math.Deploy)
	}
	root, _ := filepath.Abs("..")
	for _, s := range p.Services {
		if s.Name == "redis" {
			continue
		}
		if s.Build == nil {
			t.Errorf("%s builds nothing", s.Name)
			continue
		}
		if ctx, _ := filepath.Abs(s.Build.Context); ctx != root || s.Build.Dockerfile != "deployments/Dockerfile" {
			t.Errorf("%s builds %+v, want the repository root and deployments/Dockerfile", s.Name, s.Build)
		}
		if v := s.Environment["REDIS_URL"]; v == nil || *v != "redis://redis:6379" {
			t.Errorf("%s: REDIS_URL %v after merge keys", s.Name, v)
		}
	}
	t.Logf("compose project %q: %d services, %d volumes", p.Name, len(p.Services), len(p.Volumes))
}

// cliFlags builds the fnmesh CLI once and returns the flags of a
// subcommand (from its --help), with their defaults.
func cliFlags(t *testing.T, sub string) map[string]string {
	t.Helper()
	cliOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fnmesh-deployments-")
		if err != nil {
			cliErr = err
			return
		}
		cliBin = filepath.Join(dir, "fnmesh")
		// Built in the root module, with its own go.sum: this module
		// needs none of the CLI's dependencies.
		build := exec.Command("go", "build", "-o", cliBin, "./cmd/fnmesh")
		build.Dir = ".."
		if out, err := build.CombinedOutput(); err != nil {
			cliErr = fmt.Errorf("go build ../cmd/fnmesh: %v\n%s", err, out)
		}
	})
	if cliErr != nil {
		t.Fatal(cliErr)
	}
	out, err := exec.Command(cliBin, sub, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("fnmesh %s --help: %v\n%s", sub, err, out)
	}
	flags := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s+--([a-z-]+)[^\n]*?(?:\(default: "?([^")]*)"?\))?\s*(?:\[\$[A-Z_]+\])?$`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = m[2]
	}
	return flags
}

var (
	cliOnce sync.Once
	cliBin  string
	cliErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if cliBin != "" {
		os.RemoveAll(filepath.Dir(cliBin))
	}
	os.Exit(code)
}

// Every fnmesh subcommand the compose file and the manifests run exists,
// with the flags they pass; the gateway's default address is the port
// they publish.
func TestCLICommandsExist(t *testing.T) {
	type run struct {
		where string
		args  []string
	}
	var runs []run
	var c composeFile
	into(t, decodeAll(t, "docker-compose.yml")[0], &c)
	for name, s := range c.Services {
		if len(s.Entrypoint) > 0 && s.Entrypoint[0] == "/usr/local/bin/fnmesh" {
			runs = append(runs, run{"compose " + name, s.Command})
		}
	}
	for _, dir := range []string{"k8s/overlays/dev", "k8s/overlays/production"} {
		for _, o := range render(t, dir).all("Deployment") {
			var w workload
			into(t, o.Spec, &w)
			for _, ctr := range w.Template.Spec.Containers {
				if len(ctr.Command) > 0 && ctr.Command[0] == "/usr/local/bin/fnmesh" {
					runs = append(runs, run{dir + " " + o.Metadata.Name, ctr.Args})
				}
			}
		}
	}
	if len(runs) < 4 {
		t.Fatalf("found %d fnmesh commands: %v", len(runs), runs)
	}
	for _, r := range runs {
		if len(r.args) == 0 {
			t.Errorf("%s: fnmesh with no subcommand", r.where)
			continue
		}
		flags := cliFlags(t, r.args[0])
		for _, a := range r.args[1:] {
			if name, ok := strings.CutPrefix(a, "--"); ok {
				name, _, _ = strings.Cut(name, "=")
				if _, ok := flags[name]; !ok {
					t.Errorf("%s: fnmesh %s has no flag --%s", r.where, r.args[0], name)
				}
			}
		}
	}
	if d := cliFlags(t, "gateway")["listen"]; d != ":"+strconv.Itoa(gatewayPort) {
		t.Errorf("fnmesh gateway listens on %q by default, the deployments expect :%d", d, gatewayPort)
	}
}
