// kubenas-testcluster runs a real, single-process Kubernetes control plane for
// the kubenas test suite: an embedded etcd, the real kube-apiserver (RBAC on)
// and, with --with-controllers, the real kube-controller-manager and
// kube-scheduler. There is no kubelet, so pods are created and (if a Node
// object exists) scheduled, but never run.
//
// It writes an admin kubeconfig, prints "READY <kubeconfig>" on stdout once the
// API server answers /readyz (and, with controllers, once they have acted), and
// runs until SIGTERM/SIGINT. Logs go to stderr.
package main

import (
	"context"
	"errors"
	goflag "flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"

	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	scheduleroptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
)

func main() {
	dataDir := goflag.String("data-dir", "", "directory for etcd data, certificates and component kubeconfigs (required)")
	kubeconfig := goflag.String("kubeconfig", "", "where to write the admin kubeconfig (default DATA_DIR/admin.kubeconfig)")
	port := goflag.Int("port", 0, "API server port on 127.0.0.1 (0 picks a free one)")
	withControllers := goflag.Bool("with-controllers", false, "also run kube-controller-manager and kube-scheduler")
	verbosity := goflag.Int("v", 0, "klog verbosity of the components")
	goflag.Parse()
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "kubenas-testcluster: --data-dir is required")
		os.Exit(2)
	}
	if *kubeconfig == "" {
		*kubeconfig = filepath.Join(*dataDir, "admin.kubeconfig")
	}
	klogFlags := goflag.NewFlagSet("klog", goflag.ExitOnError)
	klog.InitFlags(klogFlags)
	_ = klogFlags.Set("v", strconv.Itoa(*verbosity))

	if err := run(*dataDir, *kubeconfig, *port, *withControllers); err != nil {
		klog.Flush()
		fmt.Fprintf(os.Stderr, "kubenas-testcluster: %v\n", err)
		os.Exit(1)
	}
	klog.Flush()
}

func init() {
	// Three components in one process would each try to (re)configure the
	// global logging state; like the upstream test servers, tolerate that.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
}

func run(dataDir, adminKubeconfig string, port int, withControllers bool) error {
	dataDir, err := filepath.Abs(dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	// The first signal starts an orderly shutdown; a second one exits at once.
	sigCh := make(chan os.Signal, 2)
	signal.Notify(sigCh, syscall.SIGTERM, syscall.SIGINT)
	stopRequested := make(chan struct{})
	go func() {
		<-sigCh
		close(stopRequested)
		<-sigCh
		os.Exit(1)
	}()

	pki, err := ensurePKI(filepath.Join(dataDir, "pki"))
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}

	etcd, etcdURL, err := startEtcd(filepath.Join(dataDir, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer func() {
		etcd.Close() // blocks until etcd has stopped
		klog.Info("etcd stopped")
	}()

	// The API server gets a listener we opened ourselves, so --port 0 works and
	// the chosen port is known before the server starts.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("listen on port %d: %w", port, err)
	}
	serverURL := "https://" + ln.Addr().String()

	kcmKubeconfig := filepath.Join(dataDir, "controller-manager.kubeconfig")
	schedKubeconfig := filepath.Join(dataDir, "scheduler.kubeconfig")
	var kcmOpts *kcmoptions.KubeControllerManagerOptions
	if withControllers {
		if kcmOpts, err = controllerManagerOptions(kcmKubeconfig, pki); err != nil {
			return fmt.Errorf("kube-controller-manager options: %w", err)
		}
	}

	apiCtx, apiCancel := context.WithCancel(context.Background())
	defer apiCancel()
	apiDone := make(chan error, 1)
	if err := startAPIServer(apiCtx, ln, etcdURL, dataDir, pki, apiDone); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	// Stop the API server before etcd (defers run last-in first-out).
	defer func() {
		apiCancel()
		select {
		case err := <-apiDone:
			if err != nil {
				klog.ErrorS(err, "kube-apiserver stopped with an error")
			}
		case <-time.After(30 * time.Second):
			klog.Error("kube-apiserver did not stop within 30s")
		}
	}()

	// Admin credentials: a client certificate in group system:masters. The
	// file is written only once everything is ready.
	adminCfg, err := pki.kubeconfig(serverURL, "kubenas-admin", []string{"system:masters"})
	if err != nil {
		return err
	}
	restCfg, err := clientcmd.NewDefaultClientConfig(*adminCfg, nil).ClientConfig()
	if err != nil {
		return err
	}
	restCfg.Timeout = 10 * time.Second
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}

	waitCtx, waitCancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer waitCancel()
	go func() {
		select {
		case <-stopRequested:
			waitCancel()
		case <-waitCtx.Done():
		}
	}()
	if err := waitReady(waitCtx, client, apiDone); err != nil {
		if closed(stopRequested) {
			return nil // asked to stop while starting: not an error
		}
		return fmt.Errorf("waiting for kube-apiserver /readyz: %w", err)
	}

	ctlCtx, ctlCancel := context.WithCancel(context.Background())
	defer ctlCancel()
	var ctlDone []chan error
	if withControllers {
		// The bootstrap RBAC policy grants these well-known user names exactly
		// what each component needs, as in a kubeadm cluster.
		for path, user := range map[string]string{
			kcmKubeconfig:   "system:kube-controller-manager",
			schedKubeconfig: "system:kube-scheduler",
		} {
			cfg, err := pki.kubeconfig(serverURL, user, nil)
			if err != nil {
				return err
			}
			if err := clientcmd.WriteToFile(*cfg, path); err != nil {
				return err
			}
		}
		kcmDone, err := startControllerManager(ctlCtx, kcmOpts)
		if err != nil {
			return fmt.Errorf("kube-controller-manager: %w", err)
		}
		schedDone, err := startScheduler(ctlCtx, schedKubeconfig)
		if err != nil {
			return fmt.Errorf("kube-scheduler: %w", err)
		}
		ctlDone = append(ctlDone, kcmDone, schedDone)
		// Controllers must stop before the API server does.
		defer func() {
			ctlCancel()
			for _, done := range ctlDone {
				select {
				case err := <-done:
					if err != nil {
						klog.ErrorS(err, "controller component stopped with an error")
					}
				case <-time.After(15 * time.Second):
					klog.Error("a controller component did not stop within 15s")
				}
			}
		}()
		// The service account controller creating "default" in "default" shows
		// the controller manager is up and acting (pods need that account).
		if err := waitDefaultServiceAccount(waitCtx, client); err != nil {
			if closed(stopRequested) {
				return nil
			}
			return fmt.Errorf("waiting for kube-controller-manager: %w", err)
		}
	}

	if err := os.MkdirAll(filepath.Dir(adminKubeconfig), 0o755); err != nil {
		return err
	}
	// Write-then-rename so a reader never sees a half-written kubeconfig.
	if err := clientcmd.WriteToFile(*adminCfg, adminKubeconfig+".tmp"); err != nil {
		return err
	}
	if err := os.Rename(adminKubeconfig+".tmp", adminKubeconfig); err != nil {
		return err
	}
	fmt.Printf("READY %s\n", adminKubeconfig)
	os.Stdout.Sync()
	klog.InfoS("test cluster ready", "server", serverURL, "kubeconfig", adminKubeconfig)

	select {
	case <-stopRequested:
		klog.Info("signal received, shutting down")
		return nil
	case err := <-apiDone:
		return fmt.Errorf("kube-apiserver exited: %v", err)
	}
}

// startEtcd runs a single-member etcd in this process, on loopback ports.
func startEtcd(dir string) (*embed.Etcd, string, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	clientURL, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(clientPort))
	peerURL, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(peerPort))

	cfg := embed.NewConfig()
	cfg.Name = "kubenas-testcluster"
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{*clientURL}
	cfg.AdvertiseClientUrls = []url.URL{*clientURL}
	cfg.ListenPeerUrls = []url.URL{*peerURL}
	cfg.AdvertisePeerUrls = []url.URL{*peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// On restart with an existing data dir the stored membership wins, but the
	// peer URL changes with the port; nobody dials it in a one-member cluster.
	cfg.StrictReconfigCheck = false
	cfg.LogLevel = "error"
	// A throwaway test cluster: skipping fsync makes writes far cheaper on a
	// busy machine, at the cost of durability after a power cut.
	cfg.UnsafeNoFsync = true

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", errors.New("etcd did not become ready within 60s")
	}
	return e, clientURL.String(), nil
}

// startAPIServer configures kube-apiserver through its own command-line flags
// (the same ones a real deployment uses) and runs it in a goroutine.
func startAPIServer(ctx context.Context, ln net.Listener, etcdURL, dataDir string, pki *pki, done chan<- error) error {
	s := apiserveroptions.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--cert-dir=" + filepath.Join(dataDir, "apiserver-certs"),
		"--tls-cert-file=" + pki.file("apiserver.crt"),
		"--tls-private-key-file=" + pki.file("apiserver.key"),
		"--client-ca-file=" + pki.file("ca.crt"),
		"--authorization-mode=Node,RBAC",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.file("sa.pub"),
		"--service-account-signing-key-file=" + pki.file("sa.key"),
		"--allow-privileged=true",
		// There is only ever one API server and it is on loopback, which an
		// Endpoints object may not hold: do not publish it there.
		"--endpoint-reconciler-type=none",
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	// Use the listener opened by the caller (it fixes the port).
	s.SecureServing.Listener = ln
	s.SecureServing.BindPort = ln.Addr().(*net.TCPAddr).Port

	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	completed, err := s.Complete(ctx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return errors.Join(errs...)
	}
	go func() {
		done <- apiserverapp.Run(ctx, completed)
	}()
	return nil
}

// controllerManagerOptions parses kube-controller-manager's flags: all default
// controllers, and --secure-port=0 so it serves no HTTP endpoint. It must run
// before the API server is configured: building these flags changes a
// feature gate default (WatchListClient), which the gate refuses once any
// component has registered the gates as flags.
func controllerManagerOptions(kubeconfig string, pki *pki) (*kcmoptions.KubeControllerManagerOptions, error) {
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return nil, err
	}
	all, disabled, aliases := kcmapp.KnownControllers(), kcmapp.ControllersDisabledByDefault(), kcmapp.ControllerAliases()
	named := s.Flags(all, disabled, aliases)
	fs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	for _, f := range named.FlagSets {
		fs.AddFlagSet(f)
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--secure-port=0",
		"--leader-elect=false", // one instance; skip the lease wait
		// Each controller talks to the API server as its own service account,
		// as in kubeadm clusters, so RBAC is exercised the real way.
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + pki.file("sa.key"),
		"--root-ca-file=" + pki.file("ca.crt"),
		"--cluster-signing-cert-file=" + pki.file("ca.crt"),
		"--cluster-signing-key-file=" + pki.file("ca.key"),
		"--controllers=*",
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	s.ParsedFlags = &named
	return s, nil
}

// startControllerManager runs kube-controller-manager; the kubeconfig its
// options name must exist by now.
func startControllerManager(ctx context.Context, s *kcmoptions.KubeControllerManagerOptions) (chan error, error) {
	all, disabled, aliases := kcmapp.KnownControllers(), kcmapp.ControllersDisabledByDefault(), kcmapp.ControllerAliases()
	cfg, err := s.Config(ctx, all, disabled, aliases)
	if err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		done <- kcmapp.Run(ctx, cfg.Complete())
	}()
	return done, nil
}

// startScheduler runs kube-scheduler with the default profile.
func startScheduler(ctx context.Context, kubeconfig string) (chan error, error) {
	opts := scheduleroptions.NewOptions()
	fs := pflag.NewFlagSet("kube-scheduler", pflag.ContinueOnError)
	for _, f := range opts.Flags.FlagSets {
		fs.AddFlagSet(f)
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--secure-port=0",
		"--leader-elect=false",
		// A pod rejected for an unbound claim is requeued by the claim's bind event, but the
		// scheduler's volume cache may lag that event and reject it once more; nothing requeues
		// it then but the flush of pods left unschedulable longer than this (checked every 30 s;
		// 5 minutes by default). Tests should wait seconds.
		"--pod-max-in-unschedulable-pods-duration=5s",
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	cc, sched, err := schedulerapp.Setup(ctx, opts)
	if err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		err := schedulerapp.Run(ctx, cc, sched)
		if ctx.Err() != nil {
			err = nil // a requested stop is reported as "finished without leader elect"
		}
		done <- err
	}()
	return done, nil
}

func waitReady(ctx context.Context, client *kubernetes.Clientset, apiDone <-chan error) error {
	return wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-apiDone:
			return false, fmt.Errorf("kube-apiserver exited: %v", err)
		default:
		}
		status := 0
		client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status)
		return status == 200, nil
	})
}

func waitDefaultServiceAccount(ctx context.Context, client *kubernetes.Clientset) error {
	return wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, nil
	})
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
