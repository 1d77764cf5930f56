"""A real S3 API server for the cold tier's tests: moto (PyPI moto[server],
its moto_server command), which deploy/setup.sh installs into .venv-moto/
of the source tree (or $CV_MOTO_SERVER). Started on a free loopback port,
stopped by close(). Requests are signed with curl's own SigV4, as any S3
client's would be (moto refuses anonymous object reads)."""
import os
import socket
import subprocess
import tempfile
import time

ROOT = os.environ.get('CV_SOURCE_ROOT',
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
MOTO = os.environ.get('CV_MOTO_SERVER',
                      os.path.join(ROOT, '.venv-moto', 'bin', 'moto_server'))
ACCESS, SECRET = 'testing', 'testing-secret'


def available():
    return os.access(MOTO, os.X_OK)


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Moto:
    def __init__(self, workdir, env=None):
        self.work = workdir
        self.access, self.secret = ACCESS, SECRET
        self.port = free_port()
        self.endpoint = 'http://127.0.0.1:%d' % self.port
        self.log = open(os.path.join(workdir, 'moto.log'), 'w')
        self.p = subprocess.Popen([MOTO, '-H', '127.0.0.1', '-p', str(self.port)],
                                  stdout=self.log, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, **(env or {})))
        deadline = time.time() + 60
        while True:
            try:
                self.request('GET', '/')
                break
            except OSError:
                if time.time() > deadline or self.p.poll() is not None:
                    self.close()
                    raise RuntimeError('moto_server did not come up on port %d' % self.port)
                time.sleep(0.2)

    def request(self, method, path, data=None, service='s3'):
        """(HTTP status, body) of one signed request (S3, or IAM's query API)."""
        with tempfile.NamedTemporaryFile(dir=self.work, delete=False) as out:
            pass
        cmd = ['curl', '-s', '-o', out.name, '-w', '%{http_code}', '-X', method,
               '--aws-sigv4', 'aws:amz:us-east-1:' + service,
               '--user', self.access + ':' + self.secret,
               '-H', 'x-amz-content-sha256: UNSIGNED-PAYLOAD', self.endpoint + path]
        if data is not None:
            cmd[1:1] = ['--data-binary', '@-']
        r = subprocess.run(cmd, input=data, capture_output=True, timeout=30)
        with open(out.name, 'rb') as f:
            body = f.read()
        os.unlink(out.name)
        if not r.stdout.strip() or int(r.stdout) == 0:
            raise OSError('no answer from %s' % self.endpoint)
        return int(r.stdout), body

    def enforce_auth(self):
        """With moto started with INITIAL_NO_AUTH_ACTION_COUNT=4 (the probe at
        start is one action, these three more): an IAM user
        allowed s3:*, whose keys every later request must be signed with
        (moto then checks SigV4 signatures and policies)."""
        import re
        import urllib.parse
        q = lambda **kw: '/?' + urllib.parse.urlencode(dict(kw, Version='2010-05-08'))
        self.request('POST', q(Action='CreateUser', UserName='cv'), service='iam')
        _, body = self.request('POST', q(Action='CreateAccessKey', UserName='cv'),
                               service='iam')
        text = body.decode()
        policy = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
                  '"Action":"s3:*","Resource":"*"}]}')
        self.request('POST', q(Action='PutUserPolicy', UserName='cv', PolicyName='s3',
                               PolicyDocument=policy), service='iam')
        self.access = re.search('<AccessKeyId>(.*?)</AccessKeyId>', text).group(1)
        self.secret = re.search('<SecretAccessKey>(.*?)</SecretAccessKey>', text).group(1)

    def objects(self, bucket, prefix=''):
        """{key: size} of the bucket's objects under PREFIX."""
        st, body = self.request('GET', '/%s?list-type=2&prefix=%s' % (bucket, prefix))
        out = {}
        for part in body.decode().split('<Contents>')[1:]:
            k = part.split('<Key>')[1].split('</Key>')[0]
            out[k] = int(part.split('<Size>')[1].split('</Size>')[0])
        return out

    def credentials_file(self, path):
        with open(path, 'w') as f:
            f.write('# test credentials\naccess_key_id = %s\nsecret_access_key = %s\n'
                    % (self.access, self.secret))
        os.chmod(path, 0o600)
        return path

    def close(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()
