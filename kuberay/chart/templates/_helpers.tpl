{{/* Names, labels and the pieces every Ray pod shares. */}}

{{- define "churn.name" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "churn.image" -}}
{{- $tag := toString .Values.image.tag -}}
{{- if has (lower $tag) (list "latest" "main" "master" "nightly" "stable") -}}
{{- fail (printf "image.tag %q moves: pin a version (the project's is %s) or a sha256 digest, so upgrades and rollbacks mean something" $tag .Chart.AppVersion) -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "churn.labels" -}}
app.kubernetes.io/name: churn
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of the pods of one component (serve, train, schedule, spark-connect). */}}
{{- define "churn.selector" -}}
app.kubernetes.io/name: churn
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Pod-level security: the image's non-root user, by number so the kubelet can verify it. */}}
{{- define "churn.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "churn.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Settings and credentials, by reference only. */}}
{{- define "churn.envFrom" -}}
- configMapRef:
    name: {{ include "churn.name" . }}-config
- secretRef:
    name: {{ .Values.secrets.env }}
{{- end -}}

{{- define "churn.volumeMounts" -}}
- name: data
  mountPath: /data
- name: backups
  mountPath: /backups
- name: auth-keys
  mountPath: /etc/churn/keys
  readOnly: true
- name: principals
  mountPath: /etc/churn/principals
  readOnly: true
{{- range $store, $secret := .Values.secrets.tls }}
{{- if $secret }}
- name: tls-{{ $store }}
  mountPath: /etc/churn/tls/{{ $store }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{- define "churn.volumes" -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ .Values.persistence.data.claimName }}
- name: backups
  persistentVolumeClaim:
    claimName: {{ .Values.persistence.backups.claimName }}
- name: auth-keys
  secret:
    secretName: {{ .Values.secrets.authKeys }}
    defaultMode: 0440
- name: principals
  secret:
    secretName: {{ .Values.secrets.principals }}
    defaultMode: 0440
{{- range $store, $secret := .Values.secrets.tls }}
{{- if $secret }}
# configs/k8s.yaml names these files; 0440: libpq refuses a key that others can read.
- name: tls-{{ $store }}
  secret:
    secretName: {{ $secret }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end -}}

{{/*
A Ray pod template. Arguments: root (the chart context), component, container (ray-head or
ray-worker), resources, head (bool: expose the head's ports).
*/}}
{{- define "churn.rayPodTemplate" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "churn.selector" . | nindent 4 }}
    {{- with .extraLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  # No serviceAccountName: KubeRay gives the head the account (and RBAC) its autoscaler needs.
  automountServiceAccountToken: {{ .autoscaler | default false }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "churn.podSecurityContext" $root | nindent 4 }}
  containers:
    - name: {{ .container }}
      image: {{ include "churn.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      envFrom:
        {{- include "churn.envFrom" $root | nindent 8 }}
      {{- if .head }}
      ports:
        - {name: gcs-server, containerPort: 6379}
        - {name: dashboard, containerPort: 8265}
        - {name: client, containerPort: 10001}
        - {name: metrics, containerPort: 8080}
        {{- if .serve }}
        - {name: serve, containerPort: 8000}
        {{- end }}
      {{- else }}
      ports:
        - {name: metrics, containerPort: 8080}
        {{- if .serve }}
        - {name: serve, containerPort: 8000}
        {{- end }}
      {{- end }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      volumeMounts:
        {{- include "churn.volumeMounts" $root | nindent 8 }}
        # Ray's object store lives in shared memory; the container default (64 MiB) is too small.
        - name: dshm
          mountPath: /dev/shm
        {{- if $root.Values.logShipping.enabled }}
        # Ray's session folder (its own logs and the JSON logs of replicas and workers,
        # configs/k8s.yaml logging.file) on a volume the Fluent Bit sidecar reads.
        - name: ray-logs
          mountPath: /tmp/ray
        {{- end }}
      securityContext:
        {{- include "churn.containerSecurityContext" $root | nindent 8 }}
    {{- if $root.Values.logShipping.enabled }}
    {{- $ship := $root.Values.logShipping }}
    # deploy/logging: Fluent Bit ships the Ray processes' files to Loki (request_id and job_id
    # as structured metadata); replica and worker output never reaches the container's stdout.
    - name: fluent-bit
      image: {{ $ship.image }}
      args: ["--config=/fluent-bit/etc/ray-sidecar.yaml"]
      env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_NAMESPACE
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        - name: NODE_NAME
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
        - {name: LOKI_HOST, value: {{ $ship.loki.host | quote }}}
        - {name: LOKI_PORT, value: {{ $ship.loki.port | quote }}}
        - {name: LOKI_TENANT, value: {{ $ship.loki.tenant | quote }}}
      resources:
        requests: {cpu: 20m, memory: 32Mi}
        limits: {cpu: 200m, memory: 128Mi}
      securityContext:
        readOnlyRootFilesystem: true
        {{- include "churn.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - {name: ray-logs, mountPath: /tmp/ray, readOnly: true}
        - {name: fluent-bit-ray, mountPath: /fluent-bit/etc, readOnly: true}
        - {name: fluent-bit-state, mountPath: /fluent-bit/state}
    {{- end }}
  volumes:
    {{- include "churn.volumes" $root | nindent 4 }}
    - name: dshm
      emptyDir:
        medium: Memory
    {{- if $root.Values.logShipping.enabled }}
    - name: ray-logs
      emptyDir: {}
    - name: fluent-bit-ray
      configMap: {name: {{ $root.Values.logShipping.configMap }}}
    - name: fluent-bit-state
      emptyDir: {}
    {{- end }}
{{- end -}}

{{/* `churn --env k8s <step>` for each step, joined by &&, quoted as Python's shlex.join. */}}
{{- define "churn.entrypoint" -}}
{{- $lines := list -}}
{{- range .steps -}}
{{- $words := list "churn" "--env" "k8s" -}}
{{- range . -}}
{{- if regexMatch "^[A-Za-z0-9_@%+=:,./-]+$" (toString .) -}}
{{- $words = append $words (toString .) -}}
{{- else -}}
{{- $words = append $words (printf "'%s'" (replace "'" "'\"'\"'" (toString .))) -}}
{{- end -}}
{{- end -}}
{{- $lines = append $lines (join " " $words) -}}
{{- end -}}
{{- join " && " $lines -}}
{{- end -}}
