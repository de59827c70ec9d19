{{/* Names, labels and the pieces every Ray pod shares. */}}

{{- define "churn.name" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "churn.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) -}}
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
      securityContext:
        {{- include "churn.containerSecurityContext" $root | nindent 8 }}
  volumes:
    {{- include "churn.volumes" $root | nindent 4 }}
    - name: dshm
      emptyDir:
        medium: Memory
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
