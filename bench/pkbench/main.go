// pkbench is the measuring client of bench/run.sh (issue 19, item 4). It is not part of
// pullkeeper: it observes the API server, resets the benchmark's ServiceAccounts, and plays the
// raw writer pullkeeper's first pass is compared with. Every subcommand prints one JSON object
// on stdout (figures only, never a credential) and progress on stderr.
//
//	raw-write  the raw-writer baseline: one POST create per Secret and one guarded JSON patch per
//	           `default` ServiceAccount, N namespaces, C at once, no cache (one list up front)
//	pass       watches Secrets and `default` ServiceAccounts until every target namespace has the
//	           Secret and its ServiceAccount references it; prints when
//	latency    creates namespaces one after another and times, from the watch, the arrival of
//	           each `default` ServiceAccount (ADDED) and of the event that carries the reference
//	wave       writes a new password into the static provider's file, then times from the watch
//	           the first and the last Secret carrying new data (optionally creating namespaces
//	           during the wave, timed as in latency)
//	apf        samples the API server's priority-and-fairness request dump and appends, per
//	           sample, how many requests of each named user execute and wait
//	reset      removes imagePullSecrets and annotations from the target `default` ServiceAccounts
//	           so that every run starts from the same state
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	if len(os.Args) < 2 {
		die("usage: pkbench raw-write|pass|latency|wave|apf|reset [flags]")
	}
	cmds := map[string]func([]string){
		"raw-write": rawWrite,
		"pass":      pass,
		"latency":   latency,
		"wave":      wave,
		"apf":       apf,
		"reset":     reset,
	}
	run, ok := cmds[os.Args[1]]
	if !ok {
		die("unknown subcommand %q", os.Args[1])
	}
	run(os.Args[2:])
}

func die(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "pkbench: "+format+"\n", a...)
	os.Exit(2)
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "[pkbench %s] "+format+"\n", append([]any{time.Now().UTC().Format("15:04:05")}, a...)...)
}

func emit(v any) {
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(v); err != nil {
		die("writing the result: %v", err)
	}
}

func unix(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

// client builds a clientset without client-side rate limiting (QPS < 0), over HTTP/2 as
// client-go does by default. observe=true asks for protobuf, which costs the observer less CPU
// than JSON on a machine it shares with what it measures; the raw writer speaks JSON, as
// pullkeeper does.
func client(kubeconfig string, observe bool) *kubernetes.Clientset {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		die("kubeconfig %s: %v", kubeconfig, err)
	}
	cfg.QPS = -1
	cfg.Burst = -1
	cfg.UserAgent = "pkbench"
	if observe {
		cfg.ContentType = "application/vnd.kubernetes.protobuf"
		cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		die("client: %v", err)
	}
	return cs
}

func rusage() (user, sys float64, maxRSSKiB int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0, 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime), tv(ru.Stime), ru.Maxrss
}

// targets lists the namespaces the benchmark's registry selects.
func targets(ctx context.Context, cs *kubernetes.Clientset, selector string) []string {
	list, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		die("listing namespaces (%s): %v", selector, err)
	}
	names := make([]string, 0, len(list.Items))
	for _, ns := range list.Items {
		if ns.DeletionTimestamp == nil {
			names = append(names, ns.Name)
		}
	}
	sort.Strings(names)
	return names
}

// defaultAccounts lists every `default` ServiceAccount, by namespace.
func defaultAccounts(ctx context.Context, cs *kubernetes.Clientset) map[string]*corev1.ServiceAccount {
	list, err := cs.CoreV1().ServiceAccounts("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=default"})
	if err != nil {
		die("listing ServiceAccounts: %v", err)
	}
	out := make(map[string]*corev1.ServiceAccount, len(list.Items))
	for i := range list.Items {
		out[list.Items[i].Namespace] = &list.Items[i]
	}
	return out
}

func references(sa *corev1.ServiceAccount, secret string) bool {
	for _, r := range sa.ImagePullSecrets {
		if r.Name == secret {
			return true
		}
	}
	return false
}

// statusCode is the HTTP status of a client-go error (201/200 for nil).
func statusCode(err error, ok int) int {
	if err == nil {
		return ok
	}
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		return int(status.Status().Code)
	}
	return 0
}

// --- raw-write -----------------------------------------------------------------------------------

// jsonPointerEscape escapes one JSON pointer token (RFC 6901).
func jsonPointerEscape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// accountPatch is the patch pullkeeper's planner (src/plan.rs account_patch) makes to add one
// entry: a `test` of the observed list (or of the resourceVersion when there is no list), the
// `add` of the reference, and the `add` of its ownership annotation.
func accountPatch(sa *corev1.ServiceAccount, secret, annotation string) ([]byte, error) {
	var ops []map[string]any
	if sa.ImagePullSecrets != nil {
		ops = append(ops,
			map[string]any{"op": "test", "path": "/imagePullSecrets", "value": sa.ImagePullSecrets},
			map[string]any{"op": "add", "path": "/imagePullSecrets/-", "value": map[string]string{"name": secret}})
	} else {
		ops = append(ops,
			map[string]any{"op": "test", "path": "/metadata/resourceVersion", "value": sa.ResourceVersion},
			map[string]any{"op": "add", "path": "/imagePullSecrets", "value": []map[string]string{{"name": secret}}})
	}
	if sa.Annotations != nil {
		ops = append(ops, map[string]any{"op": "add", "path": "/metadata/annotations/" + jsonPointerEscape(annotation), "value": secret})
	} else {
		ops = append(ops, map[string]any{"op": "add", "path": "/metadata/annotations", "value": map[string]string{annotation: secret}})
	}
	return json.Marshal(ops)
}

type counter struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counter) add(key string) {
	c.mu.Lock()
	c.m[key]++
	c.mu.Unlock()
}

func rawWrite(args []string) {
	fs := flag.NewFlagSet("raw-write", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "the writer's kubeconfig (its own ServiceAccount token)")
	selector := fs.String("selector", "", "label selector of the target namespaces")
	template := fs.String("template", "", "JSON file: a Secret pullkeeper wrote (type, data, labels, annotations)")
	secretName := fs.String("secret", "", "name of the Secret to create")
	annotation := fs.String("annotation", "", "ServiceAccount annotation recording the entry as the writer's")
	concurrency := fs.Int("concurrency", 8, "namespaces written at once")
	_ = fs.Parse(args)
	if *kubeconfig == "" || *selector == "" || *template == "" || *secretName == "" || *annotation == "" {
		die("raw-write: --kubeconfig, --selector, --template, --secret and --annotation are required")
	}
	raw, err := os.ReadFile(*template)
	if err != nil {
		die("template %s: %v", *template, err)
	}
	var tmpl corev1.Secret
	if err := json.Unmarshal(raw, &tmpl); err != nil {
		die("template %s: %v", *template, err)
	}
	ctx := context.Background()
	start := time.Now()
	u0, s0, _ := rusage()
	cs := client(*kubeconfig, false)
	names := targets(ctx, cs, *selector)
	accounts := defaultAccounts(ctx, cs)
	listed := time.Now()
	codes := &counter{m: map[string]int{}}
	jobs := make(chan string)
	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ns := range jobs {
				secret := &corev1.Secret{
					ObjectMeta: metav1.ObjectMeta{
						Name: *secretName, Namespace: ns,
						Labels: tmpl.Labels, Annotations: tmpl.Annotations,
					},
					Type: tmpl.Type,
					Data: tmpl.Data,
				}
				_, err := cs.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{})
				codes.add(fmt.Sprintf("secrets/POST/%d", statusCode(err, 201)))
				sa, ok := accounts[ns]
				if !ok {
					codes.add("serviceaccounts/missing")
					continue
				}
				patch, err := accountPatch(sa, *secretName, *annotation)
				if err != nil {
					die("patch: %v", err)
				}
				_, err = cs.CoreV1().ServiceAccounts(ns).Patch(ctx, "default", types.JSONPatchType, patch, metav1.PatchOptions{})
				codes.add(fmt.Sprintf("serviceaccounts/PATCH/%d", statusCode(err, 200)))
			}
		}()
	}
	for _, ns := range names {
		jobs <- ns
	}
	close(jobs)
	wg.Wait()
	end := time.Now()
	u1, s1, rss := rusage()
	emit(map[string]any{
		"namespaces":   len(names),
		"concurrency":  *concurrency,
		"start":        unix(start),
		"end":          unix(end),
		"list_s":       listed.Sub(start).Seconds(),
		"total_s":      end.Sub(start).Seconds(),
		"requests":     codes.m,
		"cpu_s":        (u1 - u0) + (s1 - s0),
		"max_rss_kib":  rss,
		"content_type": "application/json",
	})
}

// --- pass ----------------------------------------------------------------------------------------

// informer starts a shared informer for one resource with the given list options and returns
// once it has synced.
func informer(ctx context.Context, cs *kubernetes.Clientset, tweak func(*metav1.ListOptions),
	pick func(informers.SharedInformerFactory) cache.SharedIndexInformer, h cache.ResourceEventHandler) {
	f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTweakListOptions(tweak))
	inf := pick(f)
	reg, err := inf.AddEventHandler(h)
	if err != nil {
		die("event handler: %v", err)
	}
	f.Start(ctx.Done())
	// The store's sync is not enough: the handler must have been handed every listed object too
	// (a wave at 10,000 namespaces once read its Secret count after 2,636 of them).
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced, reg.HasSynced) {
		die("the watch never synced")
	}
}

func saInformer(ctx context.Context, cs *kubernetes.Clientset, on func(sa *corev1.ServiceAccount, initial bool, at time.Time)) {
	informer(ctx, cs, func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=default" },
		func(f informers.SharedInformerFactory) cache.SharedIndexInformer {
			return f.Core().V1().ServiceAccounts().Informer()
		},
		cache.ResourceEventHandlerDetailedFuncs{
			AddFunc: func(obj any, initial bool) {
				if sa, ok := obj.(*corev1.ServiceAccount); ok {
					on(sa, initial, time.Now())
				}
			},
			UpdateFunc: func(_, obj any) {
				if sa, ok := obj.(*corev1.ServiceAccount); ok {
					on(sa, false, time.Now())
				}
			},
		})
}

func secretInformer(ctx context.Context, cs *kubernetes.Clientset, labels, name string, on func(s *corev1.Secret, initial bool, at time.Time)) {
	informer(ctx, cs, func(o *metav1.ListOptions) {
		o.LabelSelector = labels
		o.FieldSelector = "metadata.name=" + name
	},
		func(f informers.SharedInformerFactory) cache.SharedIndexInformer {
			return f.Core().V1().Secrets().Informer()
		},
		cache.ResourceEventHandlerDetailedFuncs{
			AddFunc: func(obj any, initial bool) {
				if s, ok := obj.(*corev1.Secret); ok {
					on(s, initial, time.Now())
				}
			},
			UpdateFunc: func(_, obj any) {
				if s, ok := obj.(*corev1.Secret); ok {
					on(s, false, time.Now())
				}
			},
		})
}

func pass(args []string) {
	fs := flag.NewFlagSet("pass", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "an observer's kubeconfig (admin)")
	selector := fs.String("selector", "", "label selector of the target namespaces")
	secretLabels := fs.String("secret-labels", "", "label selector of the writer's Secrets")
	secretName := fs.String("secret", "", "the Secret's name")
	readyFile := fs.String("ready-file", "", "written once the watches have synced")
	timeout := fs.Duration("timeout", 15*time.Minute, "give up after this long")
	stall := fs.Duration("stall", 60*time.Second, "give up when nothing moved for this long after the first write")
	_ = fs.Parse(args)
	if *kubeconfig == "" || *selector == "" || *secretName == "" {
		die("pass: --kubeconfig, --selector and --secret are required")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := client(*kubeconfig, true)
	names := targets(ctx, cs, *selector)
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	var mu sync.Mutex
	secrets, refs := map[string]bool{}, map[string]bool{}
	var first, lastMove, allSecrets, allRefs time.Time
	preSecrets, preRefs := 0, 0
	move := func(at time.Time) {
		if first.IsZero() {
			first = at
		}
		lastMove = at
	}
	secretInformer(ctx, cs, *secretLabels, *secretName, func(s *corev1.Secret, initial bool, at time.Time) {
		mu.Lock()
		defer mu.Unlock()
		if !want[s.Namespace] || secrets[s.Namespace] {
			return
		}
		secrets[s.Namespace] = true
		if initial {
			preSecrets++
			return
		}
		move(at)
		if len(secrets) == len(want) {
			allSecrets = at
		}
	})
	saInformer(ctx, cs, func(sa *corev1.ServiceAccount, initial bool, at time.Time) {
		mu.Lock()
		defer mu.Unlock()
		if !want[sa.Namespace] || refs[sa.Namespace] || !references(sa, *secretName) {
			return
		}
		refs[sa.Namespace] = true
		if initial {
			preRefs++
			return
		}
		move(at)
		if len(refs) == len(want) {
			allRefs = at
		}
	})
	synced := time.Now()
	if *readyFile != "" {
		if err := os.WriteFile(*readyFile, []byte(fmt.Sprintf("%.3f\n", unix(synced))), 0o644); err != nil {
			die("ready file: %v", err)
		}
	}
	logf("watching %d namespaces for Secret %s and its reference", len(want), *secretName)
	deadline := time.Now().Add(*timeout)
	why := "done"
	lastLog := time.Now()
	for {
		mu.Lock()
		done := len(secrets) == len(want) && len(refs) == len(want)
		s, r, lm := len(secrets), len(refs), lastMove
		mu.Unlock()
		if done {
			break
		}
		now := time.Now()
		if now.After(deadline) {
			why = "timeout"
			break
		}
		if !lm.IsZero() && now.Sub(lm) > *stall {
			why = "stalled"
			break
		}
		if now.Sub(lastLog) >= 10*time.Second {
			logf("%d/%d Secrets, %d/%d references", s, len(want), r, len(want))
			lastLog = now
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	var missing []string
	for _, n := range names {
		if !refs[n] || !secrets[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 20 {
		missing = append(missing[:20], "...")
	}
	if allSecrets.IsZero() && len(secrets) == len(want) {
		allSecrets = synced // all there before the watch started
	}
	if allRefs.IsZero() && len(refs) == len(want) {
		allRefs = synced
	}
	emit(map[string]any{
		"result":           why,
		"namespaces":       len(want),
		"secrets":          len(secrets),
		"references":       len(refs),
		"present_at_start": map[string]int{"secrets": preSecrets, "references": preRefs},
		"synced":           unix(synced),
		"first_write_seen": unix(first),
		"all_secrets":      unix(allSecrets),
		"all_references":   unix(allRefs),
		"missing":          missing,
	})
}

// --- latency -------------------------------------------------------------------------------------

type nsTimes struct {
	created, added, referenced time.Time
}

// creator creates namespaces one after another, `interval` apart, recording when each create
// returned.
func creator(ctx context.Context, cs *kubernetes.Clientset, names []string, labels map[string]string,
	interval time.Duration, mu *sync.Mutex, times map[string]*nsTimes) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for _, n := range names {
			_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
				ObjectMeta: metav1.ObjectMeta{Name: n, Labels: labels},
			}, metav1.CreateOptions{})
			if err != nil {
				logf("creating namespace %s: %v", n, err)
			} else {
				at := time.Now()
				mu.Lock()
				times[n].created = at
				mu.Unlock()
			}
			<-tick.C
		}
	}()
	return done
}

func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		out[k] = v
	}
	return out
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	// nearest rank
	rank := int(p/100*float64(len(sorted)) + 0.999999)
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return sorted[rank-1]
}

func stats(samples []float64) map[string]any {
	sort.Float64s(samples)
	out := map[string]any{"n": len(samples)}
	if len(samples) > 0 {
		out["p50_ms"] = 1000 * percentile(samples, 50)
		out["p90_ms"] = 1000 * percentile(samples, 90)
		out["p99_ms"] = 1000 * percentile(samples, 99)
		out["max_ms"] = 1000 * samples[len(samples)-1]
		out["min_ms"] = 1000 * samples[0]
	}
	return out
}

// latencyReport summarises, per namespace, ADDED -> referenced and created -> referenced.
func latencyReport(names []string, times map[string]*nsTimes) map[string]any {
	var fromAdded, fromCreated []float64
	unref := 0
	for _, n := range names {
		t := times[n]
		if t.referenced.IsZero() || t.added.IsZero() {
			unref++
			continue
		}
		fromAdded = append(fromAdded, t.referenced.Sub(t.added).Seconds())
		if !t.created.IsZero() {
			fromCreated = append(fromCreated, t.referenced.Sub(t.created).Seconds())
		}
	}
	return map[string]any{
		"namespaces":                     len(names),
		"never_referenced":               unref,
		"sa_added_to_reference":          stats(fromAdded),
		"namespace_created_to_reference": stats(fromCreated),
	}
}

func latencyWatch(ctx context.Context, cs *kubernetes.Clientset, secret string, mu *sync.Mutex, times map[string]*nsTimes) {
	saInformer(ctx, cs, func(sa *corev1.ServiceAccount, initial bool, at time.Time) {
		mu.Lock()
		defer mu.Unlock()
		t, ok := times[sa.Namespace]
		if !ok || initial {
			return
		}
		if t.added.IsZero() {
			t.added = at
		}
		if t.referenced.IsZero() && references(sa, secret) {
			t.referenced = at
		}
	})
}

func nsNames(prefix string, count int) []string {
	names := make([]string, count)
	for i := range names {
		names[i] = fmt.Sprintf("%s%03d", prefix, i+1)
	}
	return names
}

func waitAll(mu *sync.Mutex, names []string, times map[string]*nsTimes, until time.Time) {
	for time.Now().Before(until) {
		mu.Lock()
		left := 0
		for _, n := range names {
			if times[n].referenced.IsZero() {
				left++
			}
		}
		mu.Unlock()
		if left == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func latency(args []string) {
	fs := flag.NewFlagSet("latency", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "an admin kubeconfig (creates namespaces)")
	prefix := fs.String("prefix", "", "names of the new namespaces: PREFIX001, PREFIX002, ...")
	count := fs.Int("count", 50, "namespaces to create")
	labels := fs.String("labels", "", "labels of the new namespaces, k=v,k=v")
	secret := fs.String("secret", "", "the Secret whose reference is awaited")
	interval := fs.Duration("interval", 300*time.Millisecond, "time between two namespace creations")
	timeout := fs.Duration("timeout", 120*time.Second, "give up after this long")
	_ = fs.Parse(args)
	if *kubeconfig == "" || *prefix == "" || *secret == "" {
		die("latency: --kubeconfig, --prefix and --secret are required")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := client(*kubeconfig, true)
	names := nsNames(*prefix, *count)
	var mu sync.Mutex
	times := map[string]*nsTimes{}
	for _, n := range names {
		times[n] = &nsTimes{}
	}
	latencyWatch(ctx, cs, *secret, &mu, times)
	start := time.Now()
	<-creator(ctx, cs, names, parseLabels(*labels), *interval, &mu, times)
	waitAll(&mu, names, times, start.Add(*timeout))
	mu.Lock()
	defer mu.Unlock()
	out := latencyReport(names, times)
	out["interval_ms"] = interval.Milliseconds()
	emit(out)
}

// --- wave ----------------------------------------------------------------------------------------

func dataHash(s *corev1.Secret) string {
	h := sha256.New()
	keys := make([]string, 0, len(s.Data))
	for k := range s.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write(s.Data[k])
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

func randomPassword(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	for i := range b {
		k, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			die("random: %v", err)
		}
		b[i] = alphabet[k.Int64()]
	}
	return string(b)
}

func writePassword(path string, length int) {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(randomPassword(length)), 0o600); err != nil {
		die("writing the password file: %v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		die("replacing the password file: %v", err)
	}
}

func wave(args []string) {
	fs := flag.NewFlagSet("wave", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "an admin kubeconfig")
	secretLabels := fs.String("secret-labels", "", "label selector of pullkeeper's Secrets")
	secretName := fs.String("secret", "", "the Secret's name")
	passwordFile := fs.String("password-file", "", "the static provider's password file, replaced by a new random password of --password-length")
	passwordLength := fs.Int("password-length", 24, "length of the new password")
	prefix := fs.String("new-prefix", "", "if set, namespaces PREFIX001... are created during the wave (from its first rotated Secret on)")
	count := fs.Int("new-count", 50, "namespaces created during the wave")
	labels := fs.String("new-labels", "", "labels of those namespaces")
	interval := fs.Duration("new-interval", 50*time.Millisecond, "time between two of those creations")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	stall := fs.Duration("stall", 60*time.Second, "give up when no Secret changed for this long after the first")
	_ = fs.Parse(args)
	if *kubeconfig == "" || *secretLabels == "" || *secretName == "" || *passwordFile == "" {
		die("wave: --kubeconfig, --secret-labels, --secret and --password-file are required")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := client(*kubeconfig, true)
	var mu sync.Mutex
	before := map[string]string{}
	changed := map[string]time.Time{}
	var first, last time.Time
	firstSeen := make(chan struct{})
	secretInformer(ctx, cs, *secretLabels, *secretName, func(s *corev1.Secret, initial bool, at time.Time) {
		mu.Lock()
		defer mu.Unlock()
		if initial {
			before[s.Namespace] = dataHash(s)
			return
		}
		old, known := before[s.Namespace]
		if !known {
			return // a namespace created during the wave: its Secret is new, not rotated
		}
		if _, done := changed[s.Namespace]; done || dataHash(s) == old {
			return
		}
		changed[s.Namespace] = at
		if first.IsZero() {
			first = at
			close(firstSeen)
		}
		last = at
	})
	var names []string
	times := map[string]*nsTimes{}
	if *prefix != "" {
		names = nsNames(*prefix, *count)
		for _, n := range names {
			times[n] = &nsTimes{}
		}
		latencyWatch(ctx, cs, *secretName, &mu, times)
	}
	mu.Lock()
	total := len(before)
	mu.Unlock()
	logf("%d Secrets %s; rotating the password", total, *secretName)
	trigger := time.Now()
	writePassword(*passwordFile, *passwordLength)
	var created <-chan struct{}
	deadline := trigger.Add(*timeout)
	why := "done"
	for {
		mu.Lock()
		n, lf := len(changed), last
		mu.Unlock()
		if created == nil && names != nil && !lf.IsZero() {
			created = creator(ctx, cs, names, parseLabels(*labels), *interval, &mu, times)
		}
		if n == total {
			break
		}
		now := time.Now()
		if now.After(deadline) {
			why = "timeout"
			break
		}
		if !lf.IsZero() && now.Sub(lf) > *stall {
			why = "stalled"
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var during map[string]any
	if names != nil {
		if created == nil {
			created = creator(ctx, cs, names, parseLabels(*labels), *interval, &mu, times)
		}
		<-created
		waitAll(&mu, names, times, time.Now().Add(2*time.Minute))
		mu.Lock()
		during = latencyReport(names, times)
		inWave := 0
		for _, n := range names {
			if a := times[n].added; !a.IsZero() && !a.After(last) {
				inWave++
			}
		}
		during["added_before_wave_end"] = inWave
		during["interval_ms"] = interval.Milliseconds()
		mu.Unlock()
	}
	mu.Lock()
	defer mu.Unlock()
	out := map[string]any{
		"result":             why,
		"secrets":            total,
		"rotated":            len(changed),
		"trigger":            unix(trigger),
		"first":              unix(first),
		"last":               unix(last),
		"first_to_last_s":    0.0,
		"trigger_to_first_s": 0.0,
	}
	if !first.IsZero() {
		out["first_to_last_s"] = last.Sub(first).Seconds()
		out["trigger_to_first_s"] = first.Sub(trigger).Seconds()
	}
	if during != nil {
		out["new_namespaces"] = during
	}
	emit(out)
}

// --- apf -----------------------------------------------------------------------------------------

// apf samples /debug/api_priority_and_fairness/dump_requests?includeRequestDetails=1 (one row per
// request queued or executing in a priority level, with its user; executing rows have
// RequestIndexInQueue -1) and appends "unix_seconds user priority-level flow-schema executing
// waiting" for every named user with a request in flight. Exempt requests (system:masters) do not pass through queues but are
// listed too.
func apf(args []string) {
	fs := flag.NewFlagSet("apf", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "an admin kubeconfig")
	users := fs.String("users", "", "comma-separated user names to count")
	interval := fs.Duration("interval", 100*time.Millisecond, "sampling interval")
	out := fs.String("out", "", "file the samples are appended to")
	_ = fs.Parse(args)
	if *kubeconfig == "" || *users == "" || *out == "" {
		die("apf: --kubeconfig, --users and --out are required")
	}
	cs := client(*kubeconfig, true)
	want := map[string]bool{}
	for _, u := range strings.Split(*users, ",") {
		want[u] = true
	}
	f, err := os.OpenFile(*out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		die("%s: %v", *out, err)
	}
	defer f.Close()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	samples, failures := 0, 0
	for {
		select {
		case <-stop:
			fmt.Fprintf(f, "# samples %d failures %d\n", samples, failures)
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		body, err := cs.CoreV1().RESTClient().Get().
			AbsPath("/debug/api_priority_and_fairness/dump_requests").
			Param("includeRequestDetails", "1").DoRaw(ctx)
		cancel()
		at := time.Now()
		if err != nil {
			failures++
			continue
		}
		samples++
		type counts struct{ executing, waiting int }
		seen := map[string]*counts{} // by "user priority-level flow-schema"
		for i, line := range strings.Split(string(body), "\n") {
			if i == 0 || strings.TrimSpace(line) == "" {
				continue
			}
			cols := strings.Split(line, ",")
			if len(cols) < 11 {
				continue
			}
			user := strings.TrimSpace(cols[10])
			if !want[user] {
				continue
			}
			key := user + " " + strings.TrimSpace(cols[0]) + " " + strings.TrimSpace(cols[1])
			c := seen[key]
			if c == nil {
				c = &counts{}
				seen[key] = c
			}
			if strings.TrimSpace(cols[3]) == "-1" {
				c.executing++
			} else {
				c.waiting++
			}
		}
		for u, c := range seen {
			fmt.Fprintf(f, "%.3f %s %d %d\n", unix(at), u, c.executing, c.waiting)
		}
	}
}

// --- reset ---------------------------------------------------------------------------------------

func reset(args []string) {
	fs := flag.NewFlagSet("reset", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "an admin kubeconfig")
	selector := fs.String("selector", "", "label selector of the target namespaces")
	concurrency := fs.Int("concurrency", 16, "ServiceAccounts patched at once")
	_ = fs.Parse(args)
	if *kubeconfig == "" || *selector == "" {
		die("reset: --kubeconfig and --selector are required")
	}
	ctx := context.Background()
	start := time.Now()
	cs := client(*kubeconfig, false)
	names := targets(ctx, cs, *selector)
	accounts := defaultAccounts(ctx, cs)
	jobs := make(chan string)
	codes := &counter{m: map[string]int{}}
	var wg sync.WaitGroup
	patch := []byte(`{"imagePullSecrets":null,"metadata":{"annotations":null}}`)
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ns := range jobs {
				_, err := cs.CoreV1().ServiceAccounts(ns).Patch(ctx, "default", types.MergePatchType, patch, metav1.PatchOptions{})
				codes.add(fmt.Sprintf("%d", statusCode(err, 200)))
			}
		}()
	}
	skipped := 0
	for _, ns := range names {
		sa, ok := accounts[ns]
		if !ok || (sa.ImagePullSecrets == nil && len(sa.Annotations) == 0) {
			skipped++
			continue
		}
		jobs <- ns
	}
	close(jobs)
	wg.Wait()
	emit(map[string]any{"namespaces": len(names), "unchanged": skipped, "patches": codes.m, "seconds": time.Since(start).Seconds()})
}
